"""Record a torch.optim.SGD trajectory for tests/test_optimizer.py (run once, needs torch).

Usage: python tools/make_sgd_fixture.py tests/fixtures/torch_sgd_trajectory.npz
"""

import sys

import numpy as np
import torch

STEPS, LR, MOMENTUM, WD = 12, 0.1, 0.9, 5e-4


def main(out):
    rng = np.random.default_rng(0)
    shapes = [(3, 4), (5,), (2, 2, 3)]
    params = [torch.nn.Parameter(torch.tensor(rng.standard_normal(s), dtype=torch.float32)) for s in shapes]
    init = [p.detach().numpy().copy() for p in params]
    opt = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WD)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS)
    grads, lrs, traj = [], [], []
    for _ in range(STEPS):
        g = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        for p, gi in zip(params, g):
            p.grad = torch.tensor(gi)
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        grads.append(g)
        traj.append([p.detach().numpy().copy() for p in params])
    arrays = {"lrs": np.array(lrs, np.float64), "config": np.array([LR, MOMENTUM, WD, STEPS])}
    for i in range(len(shapes)):
        arrays[f"init_{i}"] = init[i]
        arrays[f"grads_{i}"] = np.stack([g[i] for g in grads])
        arrays[f"traj_{i}"] = np.stack([t[i] for t in traj])
    np.savez(out, **arrays)


if __name__ == "__main__":
    main(sys.argv[1])
