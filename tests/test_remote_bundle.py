"""The remote bundle fetcher's URL rule: every bundle file comes from beside the manifest."""

from __future__ import annotations

import pytest

from ota.errors import Rejected
from ota.remote_bundle import _beside

MANIFEST = "https://models.example:8443/det/4/manifest.json"


def test_files_resolve_beside_the_manifest() -> None:
    assert _beside(MANIFEST, "model.onnx") == "https://models.example:8443/det/4/model.onnx"
    assert _beside(MANIFEST, "golden/0_in.npy") == "https://models.example:8443/det/4/golden/0_in.npy"


@pytest.mark.parametrize(
    "rel", ["http://elsewhere/x.npy", "//elsewhere/x.npy", "/etc/passwd", "a?b=1", "a#b", "%2e%2e/x", "a\\b"]
)
def test_a_file_name_that_would_leave_the_server_is_refused(rel: str) -> None:
    with pytest.raises(Rejected) as err:
        _beside(MANIFEST, rel)
    assert err.value.reason == "malformed"
