"""Records the built-in twins' numbers at one revision, to compare two revisions bit for bit (issue 17).

``mlp`` and ``conv4`` became ``dualmeta.twins`` descriptions at a13888f; the acceptance asks that they give
bit-identical results before and after. Recorded files cannot be compared across machines (a CPU with other
vector units sums batch-norm reductions in another order), so the check runs both revisions here::

    git worktree add ../old a13888f~1
    (cd ../old && python <this checkout>/parity_tests/record_revision.py /tmp/old.npz)
    python parity_tests/record_revision.py /tmp/new.npz
    python parity_tests/record_revision.py --compare /tmp/old.npz /tmp/new.npz

It records, in both backends and both dtypes, conv4 outputs and the meta-gradients (or one Reptile step's
weights) of every learner that takes conv4, and MAML on the MLP, on fixed seeded episodes. Run it from the
checkout whose code it should load (the current directory comes first on ``sys.path``).
"""
from __future__ import annotations

import importlib
import sys

import numpy as np

LEARNERS = ("maml", "metasgd", "fomaml", "anil", "reptile", "protonet", "matchingnet")
SHAPES = ((5, 1, 15), (5, 4, 4))  # ways, shots, queries


def _episodes(dtype: str, ways: int, shots: int, queries: int, tasks: int = 4):
    from dualmeta import episodes
    rng = np.random.default_rng(ways * 100 + shots * 10 + queries)
    per = shots + queries
    x = rng.random((tasks, ways * per, 28, 28, 1)).astype(dtype)
    y = np.tile(np.repeat(np.arange(ways), per), (tasks, 1))
    support = [c * per + i for c in range(ways) for i in range(shots)]
    query = [i for i in range(ways * per) if i not in support]
    return episodes.Episode(x[:, support], y[:, support], x[:, query], y[:, query])


def record() -> dict[str, np.ndarray]:
    from dualmeta import backend as chooser
    found = {}
    for backend in ("tf", "torch"):
        chooser.load_backend(backend)
        models = importlib.import_module(f"{backend}_meta.models")
        for dtype in ("float32", "float64"):
            for ways, shots, queries in SHAPES:
                batch = _episodes(dtype, ways, shots, queries)
                for learner in LEARNERS:
                    metric = learner in ("protonet", "matchingnet")
                    model = models.conv4(in_channels=1, hidden=64, num_classes=None if metric else ways,
                                         downsample="maxpool" if metric else "stride",
                                         head="flatten" if metric else "mean", track_running_stats=metric, dtype=dtype)
                    key = f"{backend}/{dtype}/{ways}w{shots}s{queries}q/{learner}"
                    learner_obj = chooser.learner_class(backend, learner)(model)
                    if learner == "reptile":
                        learner_obj.meta_train_step(batch)
                        values = learner_obj.get_weights()
                    else:
                        values = learner_obj.meta_gradients(batch)[0]
                    found.update({f"{key}/{name}": np.asarray(v) for name, v in values.items()})
            rng = np.random.default_rng(1)
            sx, qx = rng.standard_normal((2, 4, 10, 1)).astype(dtype)
            sine = np.sin(sx), np.sin(qx)
            from dualmeta.episodes import Episode
            mlp = chooser.learner_class(backend, "maml")(models.mlp(dtype=dtype))
            grads = mlp.meta_gradients(Episode(sx, sine[0], qx, sine[1]))[0]
            found.update({f"{backend}/{dtype}/mlp/maml/{n}": np.asarray(v) for n, v in grads.items()})
    return found


def compare(old_path: str, new_path: str) -> int:
    old, new = np.load(old_path), np.load(new_path)
    missing = sorted(set(old.files) ^ set(new.files))
    differ = [(k, float(np.abs(old[k] - new[k]).max())) for k in old.files if k in new.files
              and not np.array_equal(old[k], new[k])]
    print(f"{len(old.files)} arrays: {len(old.files) - len(differ) - len(missing)} bit-identical, "
          f"{len(differ)} differ, {len(missing)} in one file only")
    for key, diff in differ:
        print(f"  {key}: max |old - new| {diff:.3g}")
    return 0 if not differ and not missing else 1


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--compare":
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    if len(sys.argv) != 2:
        sys.exit("usage: record_revision.py OUT.npz | --compare OLD.npz NEW.npz")
    np.savez(sys.argv[1], **record())
    print(f"wrote {sys.argv[1]}")
