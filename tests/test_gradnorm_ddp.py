"""GradNorm under DDP: a 2-process gloo group on CPU ends with identical weights on both ranks.

Each rank trains the same DDP-wrapped toy network on its own data. Two GradNorm instances run
side by side on the same losses: ``synced`` (all-reduce on, it weights the network loss; it lives
inside the DDP-wrapped module, as in a LightningModule, made DDP-safe by ``ddp_ignore_gradnorm``)
and ``local`` (``sync=False``), which shows that the reduction really matters: without it the
ranks' weights drift apart.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from gradnorm_reference import backward_weights
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lightning_modules.gradnorm import GradNorm, ddp_ignore_gradnorm

WORLD = 2
STEPS = 8


class TwoTaskNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(6, 8)
        self.shared = nn.Linear(8, 8)  # W: last shared layer
        self.heads = nn.ModuleList([nn.Linear(8, 3), nn.Linear(8, 1)])
        self.gradnorm = GradNorm(num_stacks=1, num_tasks=2, alpha=1.0)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = torch.relu(self.shared(torch.relu(self.trunk(x))))
        return [head(h) for head in self.heads]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)  # same network init on every rank
        module = TwoTaskNet()
        ignored = ddp_ignore_gradnorm(module)
        state = ("log_weights", "initial_losses", "initialised")
        assert ignored == [f"gradnorm.{n}" for n in state]
        net = DistributedDataParallel(module)  # find_unused_parameters=False
        synced = module.gradnorm
        local = GradNorm(num_stacks=1, num_tasks=2, alpha=1.0, sync=False)
        net_params = [p for name, p in module.named_parameters() if not name.startswith("gradnorm")]
        net_opt = torch.optim.Adam(net_params, lr=1e-2)
        opts = [torch.optim.RMSprop(g.parameters(), lr=0.025) for g in (synced, local)]
        gen = torch.Generator().manual_seed(100 + rank)  # different data per rank
        first_local_losses = None
        for _ in range(STEPS):
            x = torch.randn(16, 6, generator=gen)
            y0 = (1 + 5 * rank) * torch.randn(16, 3, generator=gen)
            y1 = torch.randn(16, 1, generator=gen) * (3 - 2 * rank)
            p0, p1 = net(x)
            losses = torch.stack([((p0 - y0) ** 2).mean(), ((p1 - y1) ** 2).mean()])[None]
            if first_local_losses is None:
                first_local_losses = losses.detach().clone()
            w_params = [list(net.module.shared.parameters())]
            backward_weights(synced, losses, w_params)
            backward_weights(local, losses, w_params)
            weight_grad = synced.log_weights.grad.clone()
            net_opt.zero_grad()
            synced.total_loss(losses).backward()
            assert torch.equal(synced.log_weights.grad, weight_grad)  # DDP left it alone
            net_opt.step()
            for opt, g in zip(opts, (synced, local), strict=True):
                opt.step()
                opt.zero_grad()
                g.renormalise()
        torch.save(
            {
                "synced": synced.weights,
                "local": local.weights,
                "synced_l0": synced.initial_losses.clone(),
                "first_local_losses": first_local_losses,
                "shared_weight": net.module.shared.weight.detach().clone(),
            },
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_two_rank_gloo_weights_identical(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD))
    print(f"\nsynced weights: rank0 {r0['synced'].tolist()}  rank1 {r1['synced'].tolist()}")
    print(f"local weights:  rank0 {r0['local'].tolist()}  rank1 {r1['local'].tolist()}")

    # the all-reduced weights are bit-identical across ranks and moved away from 1
    assert torch.equal(r0["synced"], r1["synced"])
    assert (r0["synced"] - 1).abs().max() > 0.05
    torch.testing.assert_close(r0["synced"].sum(dim=1), torch.tensor([2.0]))
    # the network itself stayed in sync too (DDP), so the test compares like with like
    assert torch.equal(r0["shared_weight"], r1["shared_weight"])
    # L(0) is the mean over ranks of the first step's local losses
    mean_l0 = (r0["first_local_losses"] + r1["first_local_losses"]) / 2
    torch.testing.assert_close(r0["synced_l0"], mean_l0)
    torch.testing.assert_close(r1["synced_l0"], mean_l0)
    # the reduction matters: without it the ranks disagree and differ from the synced weights
    assert not torch.allclose(r0["local"], r1["local"], atol=1e-3)
    assert not torch.allclose(r0["local"], r0["synced"], atol=1e-3)
    assert not torch.allclose(r1["local"], r1["synced"], atol=1e-3)
