from ieiw.storage.schema import GeneratorInfo, Provenance, SampleMeta, Task, sample_key


def _gen(**settings):
    return GeneratorInfo(name="removal", backend="opencv", settings={"dilation": 15, **settings})


def test_keys_are_stable_and_depend_on_provenance_task_and_settings():
    prov = Provenance(dataset="phrasecut", image_id="1", region_id="1__0")
    key = sample_key(Task.REMOVE, prov, _gen())
    assert key == sample_key(
        "remove", Provenance(dataset="phrasecut", image_id="1", region_id="1__0"), _gen()
    )
    assert len(key) == 24 and "." not in key  # WebDataset splits keys at the first dot
    assert key != sample_key(Task.ADD, prov, _gen())
    assert key != sample_key(Task.REMOVE, prov, _gen(dilation=9))
    assert key != sample_key(
        Task.REMOVE, Provenance(dataset="phrasecut", image_id="2", region_id="1__0"), _gen()
    )


def test_key_ignores_url_and_license_so_metadata_fixes_do_not_duplicate_samples():
    a = Provenance(dataset="d", image_id="1", url="http://a", license="x")
    b = Provenance(dataset="d", image_id="1", url="http://b", license="y")
    assert sample_key("remove", a, _gen()) == sample_key("remove", b, _gen())


def test_meta_round_trips_through_json():
    meta = SampleMeta(
        key="k",
        task=Task.ADD,
        instruction="add a cup",
        instruction_source="template:add#0",
        provenance=Provenance(dataset="d", image_id="1"),
        generator=_gen(),
        scores={"a": 1.5},
    )
    again = SampleMeta.model_validate_json(meta.model_dump_json())
    assert again == meta and again.task is Task.ADD
