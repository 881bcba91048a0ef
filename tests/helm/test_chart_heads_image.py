"""Fusion heads shipped in an OCI image: an init container copies them where fusion looks."""

from __future__ import annotations

from chart_helpers import CHART, NAMESPACE, RELEASE, by_kind, component, helm, render


def _fusion_spec(*sets: str) -> dict:
    docs = render(None, "1.33.0", *sets)
    (fusion,) = [d for d in by_kind(docs, "Deployment") if component(d) == "fusion"]
    return fusion["spec"]["template"]["spec"]


def test_heads_image_is_copied_into_an_emptydir_fusion_mounts_read_only() -> None:
    spec = _fusion_spec(
        "fusion.heads.source=image",
        "fusion.heads.image.repository=registry.example.com/mmserve-heads",
        "fusion.heads.image.tag=2026-12-01",
    )
    (init,) = spec["initContainers"]
    assert init["name"] == "copy-heads" and init["image"] == "registry.example.com/mmserve-heads:2026-12-01"
    assert init["command"] == ["sh", "-c", 'cp -R "$0"/. /mnt/heads/', "/heads"]
    assert init["securityContext"]["readOnlyRootFilesystem"] is True
    assert init["volumeMounts"] == [{"name": "heads", "mountPath": "/mnt/heads"}]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "heads"]
    assert volume["emptyDir"] == {"sizeLimit": "256Mi"}
    container = spec["containers"][0]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "heads"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert mount["readOnly"] is True and env["MMSERVE_FUSION_HEADS_DIR"] == mount["mountPath"]


def test_other_head_sources_have_no_init_container() -> None:
    assert "initContainers" not in _fusion_spec()


def test_an_image_source_needs_an_image() -> None:
    result = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--set", "fusion.heads.source=image",
                  check=False)  # fmt: skip
    assert result.returncode != 0
    assert "fusion.heads.image.repository and a tag or digest are required" in result.stderr
