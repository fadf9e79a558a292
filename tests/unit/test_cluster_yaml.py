"""cluster.yaml is a valid Ray cluster launcher config (the JSON schema shipped with the installed Ray, read
without importing Ray) and has the shape the README describes: CPU head, GPU training nodes, CPU data nodes."""
import importlib.metadata
import importlib.util
import json
import sys
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _config() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def _ray_schema() -> dict:
    ray_dir = Path(importlib.util.find_spec("ray").submodule_search_locations[0])  # finds, does not import
    return json.loads((ray_dir / "autoscaler" / "ray-schema.json").read_text())


def test_validates_against_the_installed_launcher_schema():
    jsonschema.validate(_config(), _ray_schema())


def test_launcher_rules_beyond_the_schema():
    """What `ray up` checks after the schema (ray.autoscaler._private.util.validate_config)."""
    cfg = _config()
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert sum(t.get("min_workers", 0) for t in types.values()) <= cfg["max_workers"]
    assert all(t.get("max_workers", 0) <= cfg["max_workers"] for t in types.values())
    assert "cluster_synced_files" in cfg and cfg["provider"]["type"] == "aws"


def test_cpu_head_gpu_train_nodes_cpu_data_nodes():
    cfg = _config()
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu = [t for t in types.values() if t["resources"].get("GPU", 0) > 0]
    data = [name for name, t in types.items() if name != cfg["head_node_type"] and not t["resources"].get("GPU")]
    assert len(gpu) == 1 and len(data) == 1
    # GPU nodes advertise one logical CPU per GPU (scaling.cpus_per_worker = 1): decode goes to the data nodes
    assert gpu[0]["resources"]["CPU"] == gpu[0]["resources"]["GPU"]
    assert gpu[0]["max_workers"] >= 1 and types[data[0]]["max_workers"] >= 1


def test_images_match_the_installed_ray_and_install_the_project():
    cfg = _config()
    version = importlib.metadata.version("ray")
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    images = [cfg["docker"]["image"], cfg["docker"]["head_image"]] + [
        t["docker"]["worker_image"] for t in cfg["available_node_types"].values() if "docker" in t]
    assert cfg["docker"]["image"].endswith("-gpu")
    for image in images:
        name, tag = image.split(":")
        assert name == "rayproject/ray" and tag.startswith(f"{version}-{py}"), image
    mount = next(remote for remote, local in cfg["file_mounts"].items() if local == ".")
    assert any("pip install" in c and mount in c for c in cfg["setup_commands"])
