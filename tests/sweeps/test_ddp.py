"""Two gloo processes train one step with the real engine (no Ray): DDP keeps the ranks' weights equal, and
``run.ddp_find_unused`` reaches DDP — WILSON needs it (its localizer-only epoch leaves the segmentation head
without gradients), MiB does not."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ports import free_port

from tests.methods.test_methods import TINY
from wilson_ray.config import resolve_config
from wilson_ray.engine import train_step


def _rank(rank: int, port: int, overrides: dict, init: str, out: str, queue) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        overrides = dict(overrides)
        cfg = resolve_config("demo", method=overrides.pop("method.name"), overrides=overrides)
        result = train_step(cfg, 1, init_checkpoint=init, out_dir=out)
        queue.put((rank, "ok", float(result.metrics["loss/total"])))
    except Exception as err:  # noqa: BLE001 - the parent asserts on it
        queue.put((rank, "error", f"{type(err).__name__}: {err}"))
    finally:
        dist.destroy_process_group()


def _two_ranks(overrides: dict, init: str, out) -> dict[int, tuple]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank, args=(r, port, overrides, init, str(out), queue)) for r in range(2)]
    for p in procs:
        p.start()
    out = {}
    for _ in procs:
        rank, status, detail = queue.get(timeout=240)
        out[rank] = (status, detail)
    for p in procs:
        p.join(timeout=60)
    return out


@pytest.fixture(scope="module")
def step0(synth_root, tmp_path_factory):
    cfg = resolve_config("demo", overrides={**TINY, "data.root": str(synth_root)})
    return str(train_step(cfg, 0, out_dir=tmp_path_factory.mktemp("ddp-step0")).checkpoint)


@pytest.mark.timeout(300)
def test_ddp_find_unused_reaches_ddp(synth_root, step0, tmp_path):
    base = {**TINY, "data.root": str(synth_root), "incremental.max_iters_per_epoch": 3}
    mib = _two_ranks({**base, "method.name": "mib", "run.ddp_find_unused": False}, step0, tmp_path / "mib")
    assert [mib[r][0] for r in (0, 1)] == ["ok", "ok"], mib
    assert all(torch.isfinite(torch.tensor(mib[r][1])) for r in (0, 1))
    assert (tmp_path / "mib" / "step1.pt").is_file() and not (tmp_path / "mib" / "step1.pt.tmp").exists()

    base["method.pseudo_epochs"] = 1  # WILSON's first epoch trains the localizer only
    wilson = _two_ranks(
        {**base, "method.name": "wilson"}, step0, tmp_path / "wilson"
    )  # default: find_unused for a localizer method
    assert [wilson[r][0] for r in (0, 1)] == ["ok", "ok"], wilson

    forced = _two_ranks({**base, "method.name": "wilson", "run.ddp_find_unused": False}, step0, tmp_path / "forced")
    assert {forced[r][0] for r in (0, 1)} == {"error"}, forced
    assert "find_unused_parameters" in forced[0][1] or "reduction" in forced[0][1], forced
