"""Whether training workers can ever be placed on a cluster: checked before fit(), which would otherwise wait
for them forever."""
import pytest

from pipeline.cluster import fits


@pytest.mark.parametrize("nodes, n, cpus, gpus, ok", [
    ([{"CPU": 8}], 2, 1, 0, True),
    ([{"CPU": 8}], 2, 4, 0, True),
    ([{"CPU": 8}], 2, 5, 0, False),  # 10 CPUs asked of 8
    ([{"CPU": 4}, {"CPU": 4}], 2, 4, 0, True),  # one worker per node
    ([{"CPU": 4}, {"CPU": 4}], 1, 6, 0, False),  # 8 in all, but no node holds 6
    ([{"CPU": 8}], 1, 1, 1, False),  # a GPU asked of a CPU-only cluster
    ([{"CPU": 16, "GPU": 8}, {"CPU": 2}], 8, 1, 1, True),
    ([{"CPU": 16, "GPU": 4}, {"CPU": 16, "GPU": 4}], 8, 2, 1, True),
    ([{"CPU": 16, "GPU": 4}, {"CPU": 16, "GPU": 4}], 9, 1, 1, False),
])
def test_fits(nodes, n, cpus, gpus, ok):
    assert fits(nodes, n, cpus, gpus) is ok
