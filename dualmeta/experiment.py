"""An experiment's settings, resolved once from plain values: task defaults, model, learner arguments, task sets.

The command line passes its flags here as keyword arguments (``None`` = not given); this module reads no
flags and imports no framework. Defaults depend on the task (and a few on the learner):

=================  ===========================  ==============================================
setting            sinusoid (Finn et al. 2017)  omniglot (MAML family / protonet, matchingnet)
=================  ===========================  ==============================================
ways               --                           5
shots / queries    10 / 10                      1 / 15
train_ways         --                           ways (protonet: 60)
train_queries      queries                      queries (protonet: 5; lstm, snail: 1)
meta_batch_size    25                           32 / 1 (lstm: 16, snail: 32)
inner_lr           0.01                         0.4 / --
inner_steps        1 (reptile 5)                1 (reptile 5) / --
test_inner_steps   10                           3 / --
inner_reduction    mean                         sum_per_shot (the original code) / --
inner_batch_size   -- (reptile: all points)     -- (reptile: the whole support set) / --
meta_lr            1e-3 (reptile 1.0, SGD)      1e-3 (reptile 1.0, SGD; lstm 3e-3)
lr_decay_every     --                           -- / protonet 2000 (halves meta_lr), matchingnet none
steps              70000                        60000 / 20000 (lstm, snail: 40000)
hidden             40 (mlp 1-40-40-1)           64 (conv4)
                   lstm: 40 units, snail: 32
=================  ===========================  ==============================================

The model-based learners (``lstm``, ``snail``) have no inner loop (the ``inner_*`` settings do not apply)
and read the episodes of task sets wrapped in :class:`dualmeta.sequences.ShuffledSupport` (support order
shuffled by address). On Omniglot they embed images with a max-pool conv4 of ``hidden`` channels (running
batch-norm statistics, used at evaluation, so queries are embedded independently); the LSTM has 128 units
(forget-gate bias 1 at the start), SNAIL the paper's sizes; the head has ``max(ways, train_ways)`` outputs
and SNAIL reads support sets of up to ``max(ways * shots, train_ways * train_shots)`` examples. On the
sinusoid they read the raw ``(x, y)``.

Episodes are addressed by (seed, index): training batches come from ``seed``, validation episodes from
``seed + VAL_SEED_OFFSET`` and evaluation episodes from the fixed ``EVAL_SEED``, so the three never share
an episode and every run, in either backend, evaluates on the same episodes.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from dualmeta.episodes import RegressionTasks, check_positive

__all__ = ["Experiment", "resolve", "TASKS", "SPLITS", "MAML_FAMILY", "METRIC_LEARNERS", "SEQUENCE_LEARNERS",
           "PRETRAIN_LEARNERS",
           "EVAL_SEED",
           "VAL_SEED_OFFSET", "DEFINING", "OMNIGLOT_DRAWINGS"]

# folder: your own images under --data_dir; the standard few-shot sets (dualmeta.datasets) read from --data_dir.
TASKS = ("sinusoid", "omniglot", "folder", "miniimagenet", "tieredimagenet", "cifar_fs", "fc100")
SPLITS = ("vinyals", "lake")
MAML_FAMILY = ("maml", "fomaml", "reptile", "metasgd", "anil", "finetune")  # finetune: no training inner loop
METRIC_LEARNERS = ("protonet", "matchingnet")
SEQUENCE_LEARNERS = ("lstm", "snail")  # model-based: the episode read as a sequence
SECOND_ORDER = ("maml", "metasgd", "anil")  # differentiate through the inner gradients
PRETRAIN_LEARNERS = ("baseline", "baseline_pp", "simclr", "mae")  # image batches, few-shot heads at test
EVAL_SEED = 2_000_000_011
VAL_SEED_OFFSET = 1_000_003
OMNIGLOT_DRAWINGS = 20  # examples per Omniglot class
IMAGE_SIZE = 28
# (image size, channels) the episodes of each image task family are made of.
IMAGES = {"omniglot": (IMAGE_SIZE, 1), "folder": (IMAGE_SIZE, 1), "miniimagenet": (84, 3),
          "tieredimagenet": (84, 3), "cifar_fs": (32, 3), "fc100": (32, 3)}
STANDARD_SETS = {"miniimagenet": ("miniimagenet", "load_miniimagenet"),
                 "tieredimagenet": ("tieredimagenet", "load_tieredimagenet"),
                 "cifar_fs": ("cifar100", "load_cifar_fs"), "fc100": ("cifar100", "load_fc100")}
BACKBONES = ("conv4", "resnet12")  # --model for classification tasks

_SINUSOID = dict(shots=10, queries=10, meta_batch_size=25, inner_lr=0.01, inner_steps=1, test_inner_steps=10,
                 inner_reduction="mean", meta_lr=1e-3, steps=70_000, hidden=40)
_OMNIGLOT_MAML = dict(ways=5, shots=1, queries=15, meta_batch_size=32, inner_lr=0.4, inner_steps=1,
                      test_inner_steps=3, inner_reduction="sum_per_shot", meta_lr=1e-3, steps=60_000, hidden=64)
_OMNIGLOT_METRIC = dict(ways=5, shots=1, queries=15, meta_batch_size=1, meta_lr=1e-3, steps=20_000, hidden=64)
_SINUSOID_SEQUENCE = dict(shots=10, queries=10, meta_batch_size=25, meta_lr=1e-3, steps=70_000)
_OMNIGLOT_SEQUENCE = dict(ways=5, shots=1, queries=15, train_queries=1, meta_batch_size=32, meta_lr=1e-3,
                          steps=40_000, hidden=64)
# Pretraining (dualmeta/pretrain.py): minibatches of --meta_batch_size images; 5-way 1-shot test episodes.
_OMNIGLOT_PRETRAIN = dict(ways=5, shots=1, queries=15, meta_batch_size=64, meta_lr=1e-3, steps=20_000, hidden=64,
                          mask_ratio=0.75)
_SEQUENCE_HIDDEN = {"lstm": 40, "snail": 32}  # sinusoid: LSTM units, SNAIL filters
OMNIGLOT_LSTM_UNITS = 128
# Omniglot LSTM recipe (pilots in docs/learners/lstm.md): Keras' forget-gate bias of 1 at the start, 16 episodes
# per step at Adam 3e-3; with PyTorch's zero bias, or 32 episodes at 1e-3, it stayed at chance.
OMNIGLOT_LSTM_FORGET_BIAS = 1.0
_OMNIGLOT_LSTM = dict(meta_batch_size=16, meta_lr=3e-3)
# Baseline++ on Omniglot: cosine logits scaled by 20 (docs/learners/baseline_pp.md: at Chen et al.'s 10 the
# softmax over 4112 classes cannot get confident, and the 30-minute runs stopped 0.3 points short of the goal).
OMNIGLOT_BASELINE_PP_SCALE = 20.0
# Snell et al.: Adam 1e-3 halved every 2000 episodes, 60-way 5-query training episodes.
_LEARNER_DEFAULTS = {"reptile": dict(inner_steps=5, meta_lr=1.0),
                     "protonet": dict(train_ways=60, train_queries=5, lr_decay_every=2000)}
# Settings that change what is trained: --resume refuses a run whose values differ from the checkpoint's.
DEFINING = ("backend", "learner", "tasks", "split", "ways", "shots", "queries", "train_ways", "train_shots",
            "train_queries", "meta_batch_size", "inner_steps", "inner_lr", "meta_lr", "inner_reduction",
            "seed", "dtype", "hidden", "activation", "lr_decay_every", "inner_batch_size", "mask_ratio", "backbone",
            "drop_rate")


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Every resolved setting of a run (see the module docstring for the defaults)."""
    backend: str
    learner: str = "maml"
    tasks: str = "sinusoid"
    split: str | None = None
    ways: int | None = None
    shots: int = 10
    queries: int = 10
    train_ways: int | None = None
    train_shots: int = 10
    train_queries: int = 10
    meta_batch_size: int = 25
    inner_steps: int | None = 1
    test_inner_steps: int | None = 10
    inner_lr: float | None = 0.01
    meta_lr: float = 1e-3
    inner_reduction: str | None = "mean"
    inner_batch_size: int | None = None  # reptile: support examples per inner step (None: all)
    steps: int = 70_000
    seed: int = 0
    dtype: str = "float32"
    hidden: int = 40
    activation: str = "relu"
    lr_decay_every: int | None = None
    data_dir: str | None = None
    recompute_inner_steps: bool = False  # maml, metasgd, anil: rebuild each inner step's graph in backward
    mask_ratio: float | None = None  # mae: the fraction of each image hidden (default 0.75)
    backbone: str = "conv4"  # classification twin: conv4, resnet12 or 'package.module:name' (--model; issue 17)
    drop_rate: float | None = None  # resnet12 with protonet/matchingnet: DropBlock's rate (dualmeta.twins.DropBlock)

    # -- what to build ------------------------------------------------------------------------------
    @property
    def metric(self) -> bool:
        return self.learner in METRIC_LEARNERS

    @property
    def sequence(self) -> bool:
        return self.learner in SEQUENCE_LEARNERS

    @property
    def pretrain(self) -> bool:
        return self.learner in PRETRAIN_LEARNERS

    @property
    def classification(self) -> bool:
        return self.tasks != "sinusoid"

    @property
    def image(self) -> dict:
        """``in_channels`` and ``image_size`` of the image models for these tasks."""
        size, channels = IMAGES.get(self.tasks, (IMAGE_SIZE, 1))
        return dict(in_channels=channels, image_size=size)

    def model(self) -> tuple[str, dict]:
        """``(builder name, builder arguments)`` of the twin model."""
        if self.sequence:
            return self._sequence_model()
        if self.backbone == "resnet12":
            return self._resnet12()
        if self.backbone != "conv4":  # a user's description, 'package.module:name'
            return "description", dict(path=self.backbone, num_classes=None if self.metric else self.ways,
                                        **self.image)
        if self.tasks == "sinusoid":
            return "mlp", dict(in_features=1, hidden=[self.hidden, self.hidden], out_features=1,
                               activation=self.activation)
        if self.metric or self.pretrain:  # ProtoNet / Matching Networks embedding: max-pooling blocks, flattened map; batch
            # norm keeps running statistics and evaluation uses them, as the papers' code does
            return "conv4", dict(**self.image, hidden=self.hidden, num_classes=None, downsample="maxpool",
                                 head="flatten", activation=self.activation, track_running_stats=True)
        # The original MAML Omniglot network: stride-2 convolutions, features averaged over space.
        return "conv4", dict(**self.image, hidden=self.hidden, num_classes=self.ways, downsample="stride",
                             head="mean", activation=self.activation)

    def _resnet12(self) -> tuple[str, dict]:
        """ResNet-12 with widths (h, 2.5h, 5h, 10h) for ``hidden`` h (64: the paper's 64-160-320-640)."""
        h = self.hidden
        drop = dict(drop_rate=self.drop_rate) if self.drop_rate else {}
        return "resnet12", dict(**self.image, channels=[h, h * 5 // 2, h * 5, h * 10],
                                num_classes=None if self.metric else self.ways,
                                track_running_stats=self.metric, **drop)

    def _sequence_model(self) -> tuple[str, dict]:
        if self.tasks == "sinusoid":
            if self.learner == "lstm":
                return "lstm", dict(ways=None, hidden=self.hidden, in_features=1, out_features=1)
            half = max(1, self.hidden // 2)
            return "snail", dict(ways=None, support_size=max(self.shots, self.train_shots), filters=self.hidden,
                                 keys=[half, self.hidden], values=[half, self.hidden], in_features=1, out_features=1)
        encoder = dict(**self.image, hidden=self.hidden, downsample="maxpool", head="flatten",
                       activation=self.activation, track_running_stats=True)
        ways = max(self.ways, self.train_ways)
        if self.learner == "lstm":
            return "lstm", dict(ways=ways, hidden=OMNIGLOT_LSTM_UNITS, encoder=encoder,
                                forget_bias=OMNIGLOT_LSTM_FORGET_BIAS)
        return "snail", dict(ways=ways, support_size=max(self.ways * self.shots, self.train_ways * self.train_shots),
                             filters=128, keys=[64, 256], values=[32, 128], encoder=encoder)

    def learner_args(self) -> dict[str, Any]:
        if self.pretrain:
            args = dict(meta_lr=self.meta_lr, seed=self.seed)
            if self.learner in ("baseline", "baseline_pp"):  # a classifier over every training class
                args["num_classes"] = self._train_dataset().num_classes
            if self.learner == "baseline_pp" and self.tasks == "omniglot":
                args["scale"] = OMNIGLOT_BASELINE_PP_SCALE
            return args
        if self.sequence:
            return dict(meta_lr=self.meta_lr)
        if self.metric:
            return dict(meta_lr=self.meta_lr, lr_decay_every=self.lr_decay_every)
        if self.learner == "finetune":
            return dict(inner_lr=self.inner_lr, test_inner_steps=self.test_inner_steps, meta_lr=self.meta_lr)
        args = dict(inner_lr=self.inner_lr, inner_steps=self.inner_steps, test_inner_steps=self.test_inner_steps,
                    meta_lr=self.meta_lr, inner_reduction=self.inner_reduction)
        if self.learner in SECOND_ORDER:
            args["recompute_steps"] = self.recompute_inner_steps
        if self.learner == "reptile":
            args["inner_batch_size"] = self.inner_batch_size
        return args

    def defining(self) -> dict[str, Any]:
        """The settings that define the trained weights (compared on ``--resume``)."""
        return {key: getattr(self, key) for key in DEFINING}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # -- task sets ----------------------------------------------------------------------------------
    @property
    def val_seed(self) -> int:
        return self.seed + VAL_SEED_OFFSET

    def train_tasks(self):
        if self.pretrain:  # batches of images by address (seed, step); simclr, mae: no labels in them
            from dualmeta import pretrain
            dataset = self._train_dataset()
            if self.learner == "simclr":
                return pretrain.ViewBatches(dataset, seed=self.seed)
            if self.learner == "mae":
                return pretrain.MaskedBatches(dataset, seed=self.seed, mask_ratio=self.mask_ratio)
            return pretrain.ClassBatches(dataset, seed=self.seed)
        return self._tasks("train", self.train_ways, self.train_shots, self.train_queries, self.seed)

    def val_tasks(self):
        return self._tasks("val", self.ways, self.shots, self.queries, self.val_seed)

    def eval_tasks(self):
        return self._tasks("eval", self.ways, self.shots, self.queries, EVAL_SEED)

    def _tasks(self, role: str, ways, shots, queries, seed):
        tasks = self._plain_tasks(role, ways, shots, queries, seed)
        if self.sequence:
            from dualmeta.sequences import ShuffledSupport
            return ShuffledSupport(tasks)
        return tasks

    def _train_dataset(self):
        from dualmeta.datasets import omniglot as data
        subset = {"vinyals": "train", "lake": "train"}[self.split]
        return data.omniglot_split(self.split, subset, data_dir=self.data_dir, image_size=IMAGE_SIZE)

    def _plain_tasks(self, role: str, ways, shots, queries, seed):
        if self.tasks == "sinusoid":
            return RegressionTasks("sinusoid", shots=shots, queries=queries, seed=seed)
        from dualmeta.episodes import ClassificationTasks
        if self.tasks != "omniglot":
            return ClassificationTasks(self._folder(role, shots + queries), ways=ways, shots=shots, queries=queries,
                                       seed=seed)
        from dualmeta.datasets import omniglot as data  # local: Pillow and the zip readers only for Omniglot

        # Validation classes are held out of training (dualmeta.protocol): for Lake's split, the 5 Vinyals
        # validation alphabets of the background set.
        subset = {"vinyals": {"train": "train", "val": "val", "eval": "test"},
                  "lake": {"train": "train", "val": "val", "eval": "evaluation"}}[self.split][role]
        dataset = data.omniglot_split(self.split, subset, data_dir=self.data_dir, image_size=IMAGE_SIZE)
        return ClassificationTasks(dataset, ways=ways, shots=shots, queries=queries, seed=seed)


def _folder_dataset(self, role: str, needed: int):
    """--tasks=folder: the train/val/test classes under --data_dir, grey, resized to IMAGE_SIZE; a standard set
    (--tasks=miniimagenet, ...): its split under --data_dir, at its own size (IMAGES), RGB."""
    import importlib

    split = {"train": "train", "val": "val", "eval": "test"}[role]
    if self.tasks in STANDARD_SETS:
        if not self.data_dir:
            raise ValueError(f"--tasks={self.tasks} needs --data_dir=<the folder of its files> (see docs/own-data.md)")
        module, loader = STANDARD_SETS[self.tasks]
        load = getattr(importlib.import_module(f"dualmeta.datasets.{module}"), loader)
        size, channels = IMAGES[self.tasks]
        return load(self.data_dir, split, image_size=size, channels=channels, needed=needed)
    from dualmeta.datasets.folder import load_folder
    if not self.data_dir:
        raise ValueError("--tasks=folder needs --data_dir=<folder with train/ val/ test/ class folders or "
                         "train.txt, val.txt, test.txt lists>")
    return load_folder(self.data_dir, split, image_size=IMAGE_SIZE, channels=1, needed=needed)


Experiment._folder = _folder_dataset


def _expected(name, value, accepted):
    return ValueError(f"Expected one of {list(accepted)}; received {name}={value!r}")


def resolve(backend: str, learner: str = "maml", tasks: str = "sinusoid", **given) -> Experiment:
    """An :class:`Experiment` from the given settings; ``None`` (or leaving one out) takes the default.

    Raises ``ValueError`` naming the setting and the fix for combinations that cannot run.
    """
    if tasks not in TASKS:
        raise _expected("tasks", tasks, TASKS)
    if learner not in MAML_FAMILY + METRIC_LEARNERS + SEQUENCE_LEARNERS + PRETRAIN_LEARNERS:
        raise _expected("learner", learner, MAML_FAMILY + METRIC_LEARNERS + SEQUENCE_LEARNERS + PRETRAIN_LEARNERS)
    if learner in PRETRAIN_LEARNERS:
        return _resolve_pretrain(backend, learner, tasks, given)
    unknown = sorted(set(given) - {f.name for f in dataclasses.fields(Experiment)})
    if unknown:
        raise ValueError(f"Unknown settings {unknown}; expected among {[f.name for f in dataclasses.fields(Experiment)]}")
    given = {key: value for key, value in given.items() if value is not None}
    backbone = str(given.get("backbone", "conv4"))
    if ":" in backbone:
        from dualmeta import twins
        twins.resolve(backbone)  # importable and present, else one line naming the fix
    elif backbone not in BACKBONES:
        raise ValueError(f"Expected --model among {list(BACKBONES)} or a twin description 'package.module:name' "
                         f"(see docs/own-model.md); received --model={backbone}")
    if "drop_rate" in given:
        rate = given["drop_rate"]
        if backbone != "resnet12" or learner not in METRIC_LEARNERS:
            raise ValueError(f"--drop_rate is DropBlock in ResNet-12 for {' and '.join(METRIC_LEARNERS)} (they draw its "
                             f"masks); drop it for --model={backbone} --learner={learner}")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ValueError(f"Expected 0 <= --drop_rate < 1 (0.1 is usual); received --drop_rate={rate}")
        if not rate:
            del given["drop_rate"]
    if backbone != "conv4" and (tasks == "sinusoid" or learner in SEQUENCE_LEARNERS):
        raise ValueError(f"--model={backbone} is an image backbone for the MAML family and the metric learners; "
                         f"drop it for --tasks={tasks} --learner={learner}")
    if tasks == "sinusoid":
        for key in ("ways", "train_ways", "split"):
            if key in given:
                raise ValueError(f"--{key} is for classification tasks; sinusoid regression has no classes: "
                                 f"drop --{key} or use --tasks=omniglot")
        if learner in METRIC_LEARNERS or learner == "anil":
            raise ValueError(f"--learner={learner} needs classification tasks (it "
                             f"{'compares class embeddings' if learner != 'anil' else 'adapts a classifier head'}); "
                             "use --tasks=omniglot or a MAML-family learner (maml, fomaml, reptile, metasgd)")
        defaults = dict(_SINUSOID)
        if learner in SEQUENCE_LEARNERS:
            defaults = dict(_SINUSOID_SEQUENCE, hidden=_SEQUENCE_HIDDEN[learner])
    elif learner in SEQUENCE_LEARNERS:
        defaults = dict(_OMNIGLOT_SEQUENCE, split="vinyals", **(_OMNIGLOT_LSTM if learner == "lstm" else {}))
    else:
        defaults = dict(_OMNIGLOT_METRIC if learner in METRIC_LEARNERS else _OMNIGLOT_MAML)
        defaults["split"] = "vinyals"
    defaults.update(_LEARNER_DEFAULTS.get(learner, {}))
    settings = {**defaults, **given}
    for key, test_key in (("train_ways", "ways"), ("train_shots", "shots"), ("train_queries", "queries")):
        settings.setdefault(key, settings.get(test_key))
    if learner not in METRIC_LEARNERS and "lr_decay_every" in given:
        raise ValueError(f"--lr_decay_every applies to the metric learners (protonet, matchingnet); drop it "
                         f"for --learner={learner}")
    if learner != "reptile" and "inner_batch_size" in given:
        raise ValueError(f"--inner_batch_size applies to --learner=reptile (minibatches of the support set in "
                         f"its inner loop); drop it for --learner={learner}")
    if given.get("recompute_inner_steps") and learner not in SECOND_ORDER:
        raise ValueError(f"--recompute_inner_steps saves the second-order graph of {', '.join(SECOND_ORDER)}; "
                         f"--learner={learner} keeps no graph across inner steps: drop it")
    if learner == "finetune":  # supervised training on the query sets, fine-tuning only at test time
        for key in ("inner_steps", "inner_reduction"):
            if key in given:
                raise ValueError(f"--{key} does not apply to --learner=finetune (it trains without an inner "
                                 "loop; --inner_lr and --test_inner_steps set the fine-tuning); drop it")
        settings.update(inner_steps=0, inner_reduction="mean")
    if learner in METRIC_LEARNERS + SEQUENCE_LEARNERS:
        for key in ("inner_lr", "inner_steps", "test_inner_steps", "inner_reduction"):
            if key in given:
                raise ValueError(f"--{key} does not apply to --learner={learner} (it has no inner loop); drop it")
            settings[key] = None
    experiment = Experiment(backend=backend, learner=learner, tasks=tasks, **settings)
    _check(experiment)
    return experiment


def _check(e: Experiment) -> None:
    counts = dict(shots=e.shots, queries=e.queries, train_shots=e.train_shots, train_queries=e.train_queries,
                  meta_batch_size=e.meta_batch_size, steps=e.steps, hidden=e.hidden)
    if e.classification:
        counts.update(ways=e.ways, train_ways=e.train_ways)
    check_positive(**counts)
    if e.inner_batch_size is not None:
        check_positive(inner_batch_size=e.inner_batch_size)
    if e.activation not in ("relu", "softplus"):
        raise _expected("activation", e.activation, ("relu", "softplus"))
    if e.seed < 0 or e.seed in (EVAL_SEED, EVAL_SEED - VAL_SEED_OFFSET):
        raise ValueError(f"Expected a non-negative --seed other than {EVAL_SEED} and {EVAL_SEED - VAL_SEED_OFFSET} "
                         f"(their episodes are the evaluation set); received --seed={e.seed}")
    if not e.metric and not e.sequence and not e.pretrain:
        for key in ("inner_steps", "test_inner_steps"):
            value = getattr(e, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Expected --{key} to be a non-negative integer; received --{key}={value!r}")
        if not e.inner_lr > 0 or not e.meta_lr > 0:
            raise ValueError(f"Expected positive learning rates; received --inner_lr={e.inner_lr}, "
                             f"--meta_lr={e.meta_lr}")
        if e.inner_reduction not in ("mean", "sum_per_shot"):
            raise _expected("inner_reduction", e.inner_reduction, ("mean", "sum_per_shot"))
    elif not e.meta_lr > 0:
        raise ValueError(f"Expected a positive --meta_lr; received --meta_lr={e.meta_lr}")
    if e.classification:
        if e.split not in SPLITS:
            raise _expected("split", e.split, SPLITS)
        if not e.metric and not e.sequence and not e.pretrain and e.train_ways != e.ways:
            raise ValueError(f"--learner={e.learner} has a classifier with --ways={e.ways} outputs, so it trains "
                             f"with the same number of ways; received --train_ways={e.train_ways}: drop --train_ways")
        for prefix in ("", "train_") if e.tasks == "omniglot" else ():  # other sets: their loader checks
            shots, queries = getattr(e, prefix + "shots"), getattr(e, prefix + "queries")
            if shots + queries > OMNIGLOT_DRAWINGS:
                raise ValueError(f"--{prefix}shots + --{prefix}queries = {shots} + {queries} exceeds the "
                                 f"{OMNIGLOT_DRAWINGS} drawings of an Omniglot character; use "
                                 f"--{prefix}shots + --{prefix}queries <= {OMNIGLOT_DRAWINGS}")


def _resolve_pretrain(backend: str, learner: str, tasks: str, given: dict) -> Experiment:
    """The pretraining learners: Omniglot with the max-pool conv4 only; one line naming the fix otherwise."""
    given = {key: value for key, value in given.items() if value is not None}
    if tasks != "omniglot":
        raise ValueError(f"--learner={learner} pretrains an image encoder and scores it on few-shot episodes: it "
                         f"supports --tasks=omniglot only; received --tasks={tasks}")
    for key in ("inner_lr", "inner_steps", "test_inner_steps", "inner_reduction", "inner_batch_size", "lr_decay_every",
                "train_ways", "train_shots", "train_queries"):
        if key in given:
            raise ValueError(f"--{key} does not apply to --learner={learner} (it trains on batches of "
                             f"--meta_batch_size images, not episodes); drop it")
    if given.get("backbone", "conv4") != "conv4":
        raise ValueError(f"--learner={learner} pretrains the max-pool conv4 only; received --model={given['backbone']}: "
                         "drop --model")
    if given.get("recompute_inner_steps"):
        raise ValueError(f"--recompute_inner_steps saves the second-order graph of {', '.join(SECOND_ORDER)}; "
                         f"--learner={learner} has no inner loop: drop it")
    if "drop_rate" in given:
        raise ValueError(f"--drop_rate is DropBlock in ResNet-12 for {' and '.join(METRIC_LEARNERS)}; drop it for "
                         f"--learner={learner}")
    if "mask_ratio" in given and learner != "mae":
        raise ValueError(f"--mask_ratio applies to --learner=mae; drop it for --learner={learner}")
    settings = {**_OMNIGLOT_PRETRAIN, "split": "vinyals", **given}
    if learner != "mae":
        settings["mask_ratio"] = None
    else:
        from dualmeta.pretrain import check_mask_ratio
        check_mask_ratio(settings["mask_ratio"])
    if learner == "simclr" and settings["meta_batch_size"] < 2:
        raise ValueError(f"SimCLR contrasts each image with the others of its batch: a batch of "
                         f"{settings['meta_batch_size']} has no negatives; use --meta_batch_size=2 or more "
                         "(256 is usual)")
    settings.update(train_ways=settings["ways"], train_shots=settings["shots"], train_queries=settings["queries"],
                    inner_lr=None, inner_steps=None, test_inner_steps=None, inner_reduction=None)
    experiment = Experiment(backend=backend, learner=learner, tasks=tasks, **settings)
    _check(experiment)
    return experiment
