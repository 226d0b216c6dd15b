"""The CLIP embedder, its cache, the aesthetic head and InceptionV3 features, loaded through the
production loaders from checkpoints saved the way real ones are."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from quality_helpers import TINY_CLIP, picture

from ieiw.quality.aesthetic import AestheticPredictor, load_aesthetic_predictor, load_state_dict_safely
from ieiw.quality.embeddings import ClipEmbedder, EmbedderConfig, EmbeddingCache, embed_images_cached

# The published sac+logos+ava1-l14-linearMSE.pth: every key and shape of its state dict.
PUBLISHED_AESTHETIC_SHAPES = {
    "layers.0.weight": (1024, 768),
    "layers.0.bias": (1024,),
    "layers.2.weight": (128, 1024),
    "layers.2.bias": (128,),
    "layers.4.weight": (64, 128),
    "layers.4.bias": (64,),
    "layers.6.weight": (16, 64),
    "layers.6.bias": (16,),
    "layers.7.weight": (1, 16),
    "layers.7.bias": (1,),
}


def test_embedder_loads_state_dict_and_returns_unit_rows(embedder):
    images = [picture(i) for i in range(5)] + [np.zeros((20, 30, 3), np.uint8)]
    vectors = embedder.embed_images(images)
    assert vectors.shape == (6, 768) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embedder.embed_images(images[:2]), vectors[:2], atol=1e-5)
    texts = embedder.embed_texts(["remove the dog", "add a hat", "remove the dog"])
    assert texts.shape == (3, 768)
    np.testing.assert_allclose(texts[0], texts[2], atol=1e-6)
    assert not np.allclose(texts[0], texts[1])


def test_embedder_weights_come_from_the_checkpoint(clip_files, embedder):
    """Safetensors and .pt give the same model; a different state dict gives different vectors."""
    from_safetensors = ClipEmbedder.from_config(
        EmbedderConfig(
            model=TINY_CLIP, pretrained=clip_files["safetensors"], model_config_file=clip_files["config"]
        )
    )
    images = [picture(7)]
    np.testing.assert_allclose(
        from_safetensors.embed_images(images), embedder.embed_images(images), atol=1e-5
    )
    random_init = ClipEmbedder.from_config(
        EmbedderConfig(model=TINY_CLIP, pretrained=None, model_config_file=clip_files["config"])
    )
    assert not np.allclose(random_init.embed_images(images), embedder.embed_images(images), atol=1e-3)


def test_embedder_rejects_missing_checkpoint_and_bad_images(clip_files, embedder):
    with pytest.raises(FileNotFoundError):
        ClipEmbedder.from_config(
            EmbedderConfig(
                model=TINY_CLIP, pretrained="/nonexistent/clip.pt", model_config_file=clip_files["config"]
            )
        )
    with pytest.raises(ValueError, match="uint8"):
        embedder.embed_images([np.zeros((8, 8, 3), np.float32)])


def test_cache_embeds_nothing_twice_and_persists(tmp_path, embedder):
    images = {f"img{i}": picture(i) for i in range(4)}
    decoded: list[str] = []

    def load(keys):
        decoded.extend(keys)
        return [images[k] for k in keys]

    cache = EmbeddingCache(str(tmp_path / "cache"), embedder.name)
    first = embed_images_cached(embedder, cache, ["img0", "img1", "img2"], load)
    assert decoded == ["img0", "img1", "img2"]
    again = embed_images_cached(
        embedder, EmbeddingCache(str(tmp_path / "cache"), embedder.name), ["img2", "img1", "img3"], load
    )
    assert decoded == ["img0", "img1", "img2", "img3"]  # only img3 was new
    np.testing.assert_allclose(again[0], first[2], atol=1e-6)
    assert len(EmbeddingCache(str(tmp_path / "cache"), embedder.name)) == 4


def test_embedder_identity_is_its_content_never_its_path(tmp_path, clip_files, embedder_config):
    """The cache namespace follows the checkpoint's bytes: a copy elsewhere finds the same vectors, other
    weights at the same path never do; a named release is its name and tag."""
    import shutil

    import open_clip

    here, there = tmp_path / "a" / "clip.pt", tmp_path / "b" / "moved.pt"
    for path in (here, there):
        path.parent.mkdir()
        shutil.copy(clip_files["pt"], path)
    at = {p: embedder_config.model_copy(update={"pretrained": str(p)}) for p in (here, there)}
    assert at[here].identity() == at[there].identity() == embedder_config.identity()
    assert at[here].identity().startswith(f"{TINY_CLIP}-")
    torch.manual_seed(3)
    torch.save(open_clip.create_model(TINY_CLIP).state_dict(), here)
    changed = at[here].identity()
    assert changed != at[there].identity()
    assert at[here].model_identities()["pretrained"] != at[there].model_identities()["pretrained"]
    named = EmbedderConfig(model="ViT-L-14", pretrained="openai").model_identities()
    assert named == {"model": "ViT-L-14", "pretrained": "openai", "model_config_file": None}
    with pytest.raises(FileNotFoundError):
        embedder_config.model_copy(update={"pretrained": str(tmp_path / "gone.pt")}).identity()


def test_cache_cleaning_removes_only_what_killed_writers_left(tmp_path):
    cache = EmbeddingCache(str(tmp_path / "cache"), "clip")
    cache.put(["a", "b"], np.eye(2, 8, dtype=np.float32))
    folder = tmp_path / "cache" / "clip"
    (folder / "part-orphan.npy").write_bytes(b"vectors whose keys file never came")
    (folder / ".part-x.keys.parquet.tmp-0011aabb").write_bytes(b"half")
    assert cache.remove_orphans() == 2
    assert sorted(p.suffix for p in folder.iterdir()) == [".npy", ".parquet"]
    assert set(cache.get(["a", "b"])) == {"a", "b"}


def test_cache_on_fsspec_memory_filesystem(embedder):
    cache = EmbeddingCache("memory://quality-test-cache", "clip")
    vectors = np.eye(3, 768, dtype=np.float32)
    cache.put(["a", "b", "c"], vectors)
    found = EmbeddingCache("memory://quality-test-cache", "clip").get(["c", "a", "zz"])
    assert set(found) == {"a", "c"}
    np.testing.assert_array_equal(found["c"], vectors[2])


def test_aesthetic_layers_match_the_published_state_dict():
    """Golden: keys and shapes equal those of sac+logos+ava1-l14-linearMSE.pth, so it loads strictly."""
    model = AestheticPredictor()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == PUBLISHED_AESTHETIC_SHAPES
    published = {k: torch.empty(shape) for k, shape in PUBLISHED_AESTHETIC_SHAPES.items()}
    model.load_state_dict(published, strict=True)


def test_aesthetic_head_loads_through_the_production_loader(aesthetic_checkpoint):
    """The loaded head gives what the published layer layout computes by hand from the same weights:
    five linear layers with no activation between them (dropout is off at inference)."""
    model = load_aesthetic_predictor(aesthetic_checkpoint)
    weights = {k: v.double().numpy() for k, v in torch.load(aesthetic_checkpoint, weights_only=True).items()}
    embeddings = np.random.default_rng(0).standard_normal((5, 768)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    scores = model.score(embeddings)
    assert scores.shape == (5,) and np.isfinite(scores).all()
    hidden = embeddings.astype(np.float64)
    for index in (0, 2, 4, 6, 7):
        hidden = hidden @ weights[f"layers.{index}.weight"].T + weights[f"layers.{index}.bias"]
    expected = hidden[:, 0]
    assert np.ptp(expected) > 1e-3  # the checkpoint's weights separate these inputs
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="768"):
        model.score(embeddings[:, :32])


class Payload:
    """An arbitrary object: loading a checkpoint that holds one must fail, not construct it."""


def test_checkpoints_are_never_unpickled(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"layers.0.weight": Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_state_dict_safely(path)
    torch.save({"something.else": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="layers.0.weight"):
        load_aesthetic_predictor(tmp_path / "other.pth")


def test_inception_features_from_a_torchvision_state_dict(tmp_path):
    from torchvision.models import inception_v3

    from ieiw.quality.inception import InceptionFeatures

    torch.manual_seed(0)
    path = tmp_path / "inception_v3_google.pth"
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), path)
    features = InceptionFeatures.from_checkpoint(path, device="cpu")
    out = features.embed_images([picture(1, 80), picture(2, 64)])
    assert out.shape == (2, 2048) and np.isfinite(out).all()


def test_a_result_never_depends_on_its_batch_mates(tmp_path, embedder_config, aesthetic_checkpoint):
    """Bug 4 of issue 21: a model call's floats depend on its batch shape, and an embedding cache (or a
    resumed run) changes which images share a call. At the fixed shape every call runs at, an image's
    vector, its aesthetic rating and its GIQA score are the same bit for bit whatever it is computed
    with, wherever it sits in the call, and across calls of any length."""
    from ieiw.quality.giqa import KnnGiqa
    from ieiw.quality.giqa_index import ReferenceIndexSettings, build_reference_index, load_reference_index

    embedder = ClipEmbedder.from_config(embedder_config.model_copy(update={"batch_size": 4}))
    images = [picture(500 + i) for i in range(11)]
    alone = embedder.embed_images(images[3:4])[0]
    for batch in (images, images[2:5], images[::-1], images[3:4] * 2, images[1:9]):
        vectors = embedder.embed_images(batch)
        for index in [i for i, image in enumerate(batch) if image is images[3]]:
            assert np.array_equal(vectors[index], alone), (len(batch), index)
    texts = ["remove the dog", "add a red hat", "make it snow", "a photo", "a blue house"]
    one = embedder.embed_texts(texts[1:2])[0]
    assert np.array_equal(embedder.embed_texts(texts)[1], one)
    assert np.array_equal(embedder.embed_texts(texts[:2] * 3)[5], one)

    head = load_aesthetic_predictor(aesthetic_checkpoint)
    rows = embedder.embed_images(images)
    rating = head.score(rows[3:4])[0]
    assert head.score(rows)[3] == rating and head.score(rows[::-1])[len(rows) - 4] == rating
    assert head.score(np.repeat(rows, 40, axis=0))[3 * 40] == rating  # more than one call

    np.save(tmp_path / "refs.npy", embedder.embed_images([picture(900 + i) for i in range(30)]))
    build_reference_index(str(tmp_path / "refs.npy"), str(tmp_path / "index"), ReferenceIndexSettings())
    giqa = KnnGiqa(load_reference_index(str(tmp_path / "index"), use_gpu=False), k=3)
    score = giqa.score(rows[3:4])[0]
    assert giqa.score(rows)[3] == score and giqa.score(np.repeat(rows, 30, axis=0))[90] == score


def test_one_cache_instance_sees_other_writers_and_a_removed_cache(tmp_path, embedder):
    """A worker holds one cache for as long as it lives: parts other processes write are found when it is
    asked for keys it does not know, and a cache removed by hand holds nothing (it embeds again)."""
    import shutil

    url = str(tmp_path / "cache")
    held, other = EmbeddingCache(url, "clip"), EmbeddingCache(url, "clip")
    held.put(["a"], np.eye(1, 8, dtype=np.float32))
    other.put(["b"], np.eye(2, 8, dtype=np.float32)[1:])
    assert held.missing(["a", "b", "c"]) == ["c"] and set(held.get(["a", "b"])) == {"a", "b"}
    shutil.rmtree(url)  # its index still names the parts; reading them finds them gone
    assert held.get(["a", "b"]) == {} and held.missing(["a", "b"]) == ["a", "b"]
    images = {"x": picture(1), "y": picture(2)}
    first = embed_images_cached(embedder, held, ["x", "y"], lambda keys: [images[k] for k in keys])
    shutil.rmtree(url)  # removed between a lookup and a read: the vectors are computed again
    again = embed_images_cached(embedder, held, ["x", "y"], lambda keys: [images[k] for k in keys])
    assert np.array_equal(first, again)
