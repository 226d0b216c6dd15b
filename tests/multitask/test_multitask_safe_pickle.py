import os
import pickle

import pytest
from multitask_fixtures import write_refcoco

from ieiw.pipelines.multitask.safe_pickle import UnsafePickleError, load_plain_pickle_file, loads_plain
from ieiw.pipelines.multitask.segmentation_sources import iter_refcoco


class _Payload:
    """What an attacker would pickle: unpickling it calls os.system."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_plain_refs_load_as_plain_data(tmp_path):
    refs_path, _, _ = write_refcoco(str(tmp_path))
    refs = load_plain_pickle_file(refs_path)
    assert isinstance(refs, list) and refs[0]["sentences"][0]["sent"] == "man on the left"
    assert loads_plain(pickle.dumps({"a": [1, 2.5, "x", (3, None), True]})) == {
        "a": [1, 2.5, "x", (3, None), True]
    }


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_crafted_pickle_is_refused_and_nothing_runs(tmp_path, protocol):
    marker = tmp_path / f"pwned-{protocol}"
    crafted = tmp_path / "refs(unc).p"
    crafted.write_bytes(pickle.dumps([{"ref_id": 0}, _Payload(f"touch {marker}")], protocol=protocol))
    with pytest.raises(
        UnsafePickleError, match=r"refused: the pickle asks for the global (posix|os)\.system"
    ):
        load_plain_pickle_file(str(crafted))
    assert not marker.exists()


def test_reader_refuses_a_crafted_refs_file(tmp_path):
    _, instances, images = write_refcoco(str(tmp_path))
    marker = tmp_path / "pwned"
    crafted = tmp_path / "evil" / "refs(unc).p"
    crafted.parent.mkdir()
    crafted.write_bytes(pickle.dumps(_Payload(f"touch {marker}")))
    with pytest.raises(UnsafePickleError, match="only plain data"):
        list(iter_refcoco(str(crafted), instances, images))
    assert not marker.exists()


def test_any_global_at_all_is_refused():
    import collections

    for value in (collections.OrderedDict(a=1), {1, 2}, frozenset(), bytearray(b"x"), complex(1, 2)):
        with pytest.raises(UnsafePickleError):
            loads_plain(pickle.dumps(value, protocol=2))
