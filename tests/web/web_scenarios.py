"""Fixture sites for the web-edits tests and bench: good posts, bad posts and every misbehaviour."""

from __future__ import annotations

from web_fixture_server import Comment, FixtureSite, Post
from web_images import edits, jpeg_bytes, meme, photo, text_screenshot

FAULT_PATHS = [
    "/fault/hang.jpg",
    "/fault/slow.jpg",
    "/fault/error500.jpg",
    "/fault/loop-a.jpg",
    "/fault/to-private.jpg",
    "/fault/to-metadata.jpg",
    "/fault/truncated.jpg",
    "/fault/bomb.png",
    "/fault/huge.jpg",
    "/fault/huge-unannounced.jpg",
    "/fault/page.jpg",
    "/private/edit.jpg",
    "/fault/wrong-type.jpg",
    "/fault/ratelimited.jpg",
    "/fault/chain-0.jpg",
    "/fault/to-localhost.jpg",
    "/fault/to-6to4.jpg",
    "/fault/to-nat64.jpg",
    "/img/hidden-edit.jpg",
]
FAULT_REASONS = {
    "/fault/hang.jpg": "edit_timeout",
    "/fault/slow.jpg": "edit_deadline_exceeded",
    "/fault/error500.jpg": "edit_http_500",
    "/fault/loop-a.jpg": "edit_redirect_loop",
    "/fault/to-private.jpg": "edit_blocked_address",
    "/fault/to-metadata.jpg": "edit_blocked_address",
    "/fault/truncated.jpg": "edit_truncated_image",
    "/fault/bomb.png": "edit_decompression_bomb",
    "/fault/huge.jpg": "edit_body_too_large",
    "/fault/huge-unannounced.jpg": "edit_body_too_large",
    "/fault/page.jpg": "edit_not_an_image",
    "/private/edit.jpg": "edit_robots_disallowed",
    "/fault/chain-0.jpg": "edit_too_many_redirects",
    "/fault/to-localhost.jpg": "edit_blocked_address",
    "/fault/to-6to4.jpg": "edit_blocked_address",
    "/fault/to-nat64.jpg": "edit_blocked_address",
    "/img/hidden-edit.jpg": "edit_robots_disallowed",
}
# Links in the answers of the post "links1" that are not fetched, or refused, and their manifest reason.
LINK_REASONS = {
    "file:///etc/passwd": "edit_unsupported_scheme",
    "ftp://127.0.0.1/pub/edit.jpg": "edit_unsupported_scheme",
    "http://[::1]:{port}/img/a_removed.jpg": "edit_blocked_address",
    "http://localhost:{port}/img/a_removed.jpg": "edit_blocked_address",
    "http://127.1:{port}/img/a_removed.jpg": "edit_blocked_address",
    "http://0x7f000001:{port}/img/a_removed.jpg": "edit_blocked_address",
    "http://2130706433:{port}/img/a_removed.jpg": "edit_blocked_address",
    "https://127.0.0.1:{port}/img/a_removed.jpg": "edit_blocked_address",
    "{base}/go/a_removed": "edit_not_an_image_link",
    "{base}/fault/chain-0.jpg": "edit_too_many_redirects",
    "https://example.org/how-to-use-the-clone-tool": "edit_not_an_image_link",
}
LINKS_POST_BODY = (
    "Reference: https://example.org/ref.jpg (see https://example.org/about) and file:///tmp/x.png"
)
GOOD_POSTS = {
    "good1": "c1",
    "gallery1": "g1",
    "preview1": "v1",
    "faults1": None,
    "busy1": "b1",
    "links1": "l2-0",
}


def _add(site: FixtureSite, path: str, image) -> str:
    site.images[path] = jpeg_bytes(image)
    return path


def fault_site() -> FixtureSite:
    """Posts covering every outcome; see the module constants for what each should give."""
    site = FixtureSite()
    site.page_size = 4
    astronaut, coffee, chelsea, rocket, camera = (
        photo(n) for n in ("astronaut", "coffee", "chelsea", "rocket", "camera")
    )
    a_edits, c_edits, k_edits = edits(astronaut), edits(coffee), edits(chelsea)
    site.posts.append(
        Post(
            "good1",
            "[Request] Can someone please remove the patch on his suit? Will tip $5",
            "Hi all! Thanks in advance.",
            _add(site, "/img/astronaut.jpg", astronaut),
            [
                Comment(
                    "c1",
                    "editor1",
                    [_add(site, "/img/a_removed.jpg", a_edits["object_removed"])],
                    score=5,
                    op_reply=True,
                ),
                Comment("c2", "joker", [_add(site, "/img/meme.jpg", meme(7))], score=50),
                Comment(
                    "c3", "editor2", [_add(site, "/img/a_graded.jpg", a_edits["colour_graded"])], score=1
                ),
            ],
        )
    )
    site.posts.append(
        Post(
            "gallery1",
            "Could anyone add a caption to this photo?",
            "",
            _add(site, "/img/coffee.jpg", coffee),
            [
                Comment(
                    "g1",
                    "editor3",
                    [_add(site, "/img/c_caption.jpg", c_edits["caption_added"])],
                    uploaded=True,
                    score=3,
                ),
            ],
            gallery=True,
        )
    )
    site.posts.append(
        Post(
            "preview1",
            "Please crop out the edges",
            "paid $3 via paypal",
            _add(site, "/img/chelsea.jpg", chelsea),
            [
                Comment("v1", "editor4", [_add(site, "/img/k_crop.jpg", k_edits["cropped"])], score=2),
                Comment("v2", "troll", [_add(site, "/img/screenshot.jpg", text_screenshot(3))]),
            ],
            preview_only=True,
        )
    )
    rocket_edit = edits(rocket)["sky_replaced"]
    site.images["/img/fault_good_edit.jpg"] = jpeg_bytes(rocket_edit)
    site.posts.append(
        Post(
            "faults1",
            "Replace the sky please",
            "",
            _add(site, "/img/rocket.jpg", rocket),
            [Comment(f"f{i}", f"user{i}", [p], score=1) for i, p in enumerate(FAULT_PATHS)],
        )
    )
    site.posts.append(
        Post(
            "links1",
            "Remove the patch on his suit please",
            LINKS_POST_BODY,
            "/img/astronaut.jpg",
            [
                Comment("l1", "linker", [], links=list(LINK_REASONS)[:6]),
                Comment("l2", "linker2", ["/img/a_removed.jpg"], links=list(LINK_REASONS)[6:], score=2),
            ],
        )
    )
    site.posts.append(
        Post(
            "nsfw1",
            "Remove the tattoo",
            "",
            _add(site, "/img/nsfw.jpg", camera),
            [Comment("n1", "someone", ["/img/nsfw_edit.jpg"])],
            over_18=True,
        )
    )
    site.posts.append(
        Post(
            "orig500",
            "Brighten this photo",
            "",
            "/fault/orig/error500.jpg",
            [Comment("o1", "editor5", ["/img/a_graded.jpg"])],
        )
    )
    site.posts.append(Post("text1", "How do I learn photoshop?", "Any tips?", None, []))
    site.posts.append(
        Post(
            "busy1",
            "Make it black and white",
            "",
            _add(site, "/img/camera.jpg", camera),
            [Comment("b1", "editor6", [_add(site, "/img/cam_bw.jpg", edits(camera)["heavy_jpeg"])], score=4)],
        )
    )
    site.posts.append(
        Post(
            "noedits1",
            "Remove my ex from this photo",
            "",
            "/img/coffee.jpg",
            [
                Comment("x1", "requester", ["/img/c_caption.jpg"]),
                Comment("x2", "AutoModerator", ["/img/k_crop.jpg"]),
            ],
        )
    )
    site.posts.append(
        Post(
            "chat1",
            "Hi everyone!",
            "Thank you all so much",
            "/img/astronaut.jpg",
            [Comment("h1", "editor7", ["/img/a_graded.jpg"])],
        )
    )
    return site


def bulk_site(posts: int, seed_photos=("astronaut", "coffee", "chelsea", "rocket", "retina")) -> FixtureSite:
    """``posts`` simple posts, each an original with one good edit and one unrelated image."""
    site = FixtureSite()
    site.page_size = 25
    bases = {n: photo(n, side=192) for n in seed_photos}
    base_edits = {n: edits(img) for n, img in bases.items()}
    kinds = {
        "background_blurred": "Can someone blur the background please",
        "colour_graded": "Make it more vivid",
        "caption_added": "Could anyone add a birthday caption?",
        "black_and_white": "Make it black and white",
        "sky_replaced": "Replace the sky with a blue one",
    }
    for index in range(posts):
        name = seed_photos[index % len(seed_photos)]
        kind = list(kinds)[(index // len(seed_photos)) % len(kinds)]
        original = bases[name].copy()
        original[:6, :6] = index % 251  # distinct bytes per post: no accidental download sharing
        edit = base_edits[name][kind].copy()
        edit[:6, :6] = index % 251
        pid = f"p{index:04d}"
        site.posts.append(
            Post(
                pid,
                kinds[kind],
                "",
                _add(site, f"/img/{pid}.jpg", original),
                [
                    Comment(f"{pid}e", "editor", [_add(site, f"/img/{pid}_edit.jpg", edit)], score=3),
                ],
            )
        )
    return site
