"""The paper's fixed-budget experiment end to end: simulate workers (or read real labels), label
the items at each redundancy, aggregate (MV, WMV, label-only EM, MBEM, oracle, clean labels),
train the ResNet on each aggregate, test it, and write results.json; mbemlib/report.py turns it
into tables, paired statistics and figures.

    python MBEM.py                        # the `paper` preset: the release's protocol on CIFAR-10
    python MBEM.py --preset cpu --dataset folder --source ../shared/data/cifar10-jpeg.tar.gz
    python MBEM.py --preset demo          # offline, scikit-learn digits, a few minutes
    python MBEM.py --help

Read top to bottom: Algorithm 1 (`mbem`); one cell (`Experiment.cell`: labels -> a method's
targets, made by the kind of method it is, aggregation.REGISTRY's `needs` -> a training -> its
test error and record); the sweep (`main`: seeds -> (r, n) -> methods); the machine (trainers,
GPUs, images). Data flow per (seed, redundancy r, n items): true labels of the first n items of
a seeded shuffle -> noise_sim labels (or mbemlib/annotations.py's subsample of real ones) ->
mbemlib/aggregation.py's targets -> resnet.train or resnet_torch.train -> test error -> a cell
in results.json. Settings are mbemlib/settings.py's; results and bootstrap files mbemlib/store.py's.
"""

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

import noise_sim
from mbemlib import aggregation as agg
from mbemlib import annotations as crowd
from mbemlib import dataset as data
from mbemlib import pipeline, report, settings, store
from mbemlib.cli import INSTALL, InputError, RunError, format_seconds
from mbemlib.pipeline import IMAGENET_DROPS

# Targets this close give the same model up to float32 rounding (the trainers see float32 rows), so a
# cell reuses a model already trained on them: MV and WMV at r = 1 (identical one-hot rows), and
# label-only EM at r = 1 on many items, which converges to MV's rows within 1e-10 (50,000 items).
SAME_TARGETS = 1e-6
# The validation split and the one shuffle whose first n images are a cell's items: fixed, the same
# for every seed and redundancy, so that cells differ only in their labels.
SPLIT_SEED = 12345


@dataclass
class Trained:
    """What one training leaves: the model's probabilities on its items and on the test set (None
    without one), the per-epoch history, and the model itself."""

    train_probs: np.ndarray
    test_probs: np.ndarray
    history: list
    model: object


# ----------------------------------------------------------------------------- the paper's algorithm

def mbem(ann, bootstrap, train, rounds=1, class_prior=False, step="release"):
    """Model Bootstrapped EM (the paper's Algorithm 1) from a bootstrap model's predicted class of
    every training item (the release: the model trained on weighted majority vote). The paper's T
    counts trainings, the bootstrap's among them, so `rounds` rounds are T = rounds + 1 (the
    release: one round, T = 2). Each round:

        M-step   take the model's predictions t_i as the truth: each worker's confusion
                 pi_a[k, l] = #(t = k, a said l) / #(t = k, a labelled), and with class_prior
                 q[k] = share of items with t = k (the release has no q); step="one-coin"
                 fits one-coin workers instead, corrected for the model's accuracy
                 (aggregation.one_coin_step), and step="per-class-coin" a coin per worker
                 and class, corrected for the model's precision on each class
                 (aggregation.per_class_coin_step): options beyond the paper;
        E-step   the posterior P(y_i = k | labels) proportional to q[k] prod_a pi_a[k, label_a(i)];
        retrain  train(posterior, round) -> Trained: a new model on the posterior, whose
                 predictions start the next round.

    Returns (posterior, confusions, the last Trained, every round's posterior)."""
    predicted, posteriors = agg.one_hot(bootstrap, ann.K), []
    for t in range(rounds):
        posterior, confusions = agg.mbem_update(ann, predicted, step, class_prior)
        result = train(posterior, t)
        predicted = result.train_probs
        posteriors.append(posterior)
    return posterior, confusions, result, posteriors


def oracle_targets(ann, workers):
    """The posterior under the true confusions, zeros lifted to 1e-10 as the release smooths: MBEM
    with a perfect bootstrap. Returns (targets, confusions)."""
    confusions = np.maximum(workers, agg.RELEASE_ZERO)
    return agg.posterior(ann, confusions / confusions.sum(axis=2, keepdims=True)), confusions


# ----------------------------------------------------------------------------- the experiment

@dataclass
class Cell:
    """What a method sees of one (seed, r, n, algorithm) cell: its items, their labels (within each
    item's group when classes are grouped), the simulated workers (None for real labels), the
    items' true classes (-1 where unknown) and the method's own random stream."""

    seed: int
    r: int
    n: int
    algorithm: str
    items: np.ndarray
    ann: agg.Annotations
    workers: np.ndarray
    truth: np.ndarray
    grouped: agg.Grouped
    rng: np.random.Generator

    def classes(self, hard):
        """Hard labels as classes of the K (grouped: their group's positions mapped back)."""
        return self.grouped.classes(hard) if self.grouped else hard

    def accuracy(self, targets):
        """How often the targets' argmax is the true class, where that is known (None if nowhere)."""
        known = self.truth >= 0
        hard = self.classes(targets.argmax(axis=1))
        return float((hard == self.truth)[known].mean()) if known.any() else None


@dataclass
class Made:
    """What a method's cell leaves: the training, its targets, the worker confusions it estimated
    (None where it has none), the workers' accuracy it estimated itself, and extra record fields."""

    trained: Trained
    targets: np.ndarray
    confusions: np.ndarray
    estimated: object = None
    extra: dict = field(default_factory=dict)


class Experiment:
    """Everything one run shares: the data, the split, the labels (simulated or real), the plan of
    (r, n) cells, the models trained so far."""

    def __init__(self, config, ds, writer=True, verbose=False):
        self.config, self.writer, self.imagenet = config, writer, config.dataset == "imagenet"
        # every epoch's line in the run's log file (not the screen, which has the cells' lines, unless -v)
        self.epoch_log = pipeline.EpochLog(os.path.join(config.out, "train.log"), verbose) if writer else None
        val_index = self.split(ds)
        self.real, self.ds = self.read_real_labels(ds)  # real labels may name the classes
        self.K = len(self.ds.classes)
        self.plan = self.check_plan()
        if config.group_size and self.K % config.group_size:
            raise RunError(f"--group-size {config.group_size} does not divide the {self.K} classes")
        self.check_truth(val_index)
        self.trained = {}  # (seed, items digest) -> [(targets, Trained)]: see fit
        self.bootstrap = {}  # (seed, r, n) -> the WMV model's predicted class of each item, for MBEM
        self.trainer = trainer(config.backend)
        self.trainer_code = store.trainer_digest()  # a checkpoint of other trainer code is not resumed
        self.precision = "fp32"
        if config.backend == "torch":
            try:
                self.precision = self.trainer.resolve_precision(config.precision, config.gpus)
            except ValueError as err:
                raise RunError(str(err)) from err

    def labels(self, seed, r, n, workers):
        """(training images of the n items, their labels at redundancy r, each worker's true
        accuracy), shared by every algorithm. Simulated: the first n images of the pool, labelled by
        `workers`. Real: n images drawn from those with r labels, r of their labels drawn."""
        rng = np.random.default_rng([seed, r, n])
        truth = self.ds.train_labels
        if self.real is None:
            items = self.pool[:n]
            ann = agg.Annotations(*noise_sim.simulate_labels(truth[items], workers, r, rng), n, len(workers), self.K)
            return items, ann, agg.worker_accuracy(workers)
        try:
            items, ann = crowd.subsample(self.real, self.allowed, r, n, rng, self.K)
        except InputError as err:
            raise RunError(str(err)) from err
        known = (truth[items] >= 0).any()  # without any known class there is no accuracy to compare with
        return items, ann, crowd.empirical_accuracy(ann, truth[items]) if known else None

    def cell(self, seed, r, n, algorithm, workers, items, ann, true_accuracy):
        """One (seed, r, n, algorithm) cell on the labels `ann` of the training images `items`: the
        method's targets, a network trained on them, its test error; returns the cell's record."""
        c, start = self.config, time.perf_counter()
        # Grouped classes (the paper's ImageNet workers): every estimator runs on the labels' positions
        # within their group, targets are n x g, and grouped.classes maps them back to the K classes.
        grouped = agg.group_labels(ann, c.group_size) if c.group_size else None
        rng = np.random.default_rng([seed, r, n, agg.REGISTRY[algorithm].seed])
        cell = Cell(seed, r, n, algorithm, items, grouped.local if grouped else ann, workers,
                    self.ds.train_labels[items], grouped, rng)

        def fit(targets, tag, crowd=None, epochs=None):
            return self.fit(targets, items, seed, f"seed {seed} r {r} {tag}", grouped, crowd, epochs)

        made = TARGET_MAKERS[agg.REGISTRY[algorithm].needs](self, cell, fit)
        history, test_probs = made.trained.history, made.trained.test_probs
        record = {"redundancy": r, "n": n, "algorithm": algorithm, "seed": seed,
                  "test_error": None if test_probs is None else report.top_k_error(test_probs, self.ds.test_labels, 1),
                  "val_error": report.selected_val_error(history, c.select_epoch),
                  "label_accuracy": cell.accuracy(made.targets),
                  **report.worker_fields(cell.ann, made.confusions, true_accuracy,
                                         None if self.real is None else made.targets, made.estimated),
                  "epochs": len(history), "backend": c.backend, "precision": self.precision,
                  "machine": store.machine(),
                  "wall_seconds": time.perf_counter() - start,
                  "train_img_per_s": float(np.mean([h["img_per_s"] for h in history])), **made.extra,
                  "history": [{k: round(v, 6) if isinstance(v, float) else v for k, v in h.items()} for h in history]}
        if self.K > 10 and test_probs is not None:
            record["test_error_top5"] = report.top_k_error(test_probs, self.ds.test_labels, 5)
        if self.writer:
            self.write_cell(f"{algorithm}-seed{seed}-r{r}", items, made.targets, made.confusions, made.trained, grouped)
        return record

    # Each kind of method's targets (aggregation.REGISTRY's `needs`): (cell, fit) -> Made.

    def from_labels(self, cell, fit):
        """mv, wmv, em: the labels alone (aggregation.aggregate); WMV's model is MBEM's bootstrap."""
        result = agg.aggregate(cell.ann, cell.algorithm, cell.rng)
        if not result.converged and self.writer:
            print(f"warning: seed {cell.seed} r {cell.r} em: stopped after {result.iterations} iterations, before "
                  "converging", file=sys.stderr, flush=True)
        trained = fit(result.posterior, cell.algorithm)
        if cell.algorithm == "wmv":
            self.keep_bootstrap(cell.seed, cell.r, cell.n, cell.ann, trained.train_probs)
        return Made(trained, result.posterior, result.confusions)

    def from_true_confusions(self, cell, fit):
        """oracle: the E-step under the simulated workers' own confusions."""
        targets, confusions = oracle_targets(cell.ann, cell.workers)
        return Made(fit(targets, cell.algorithm), targets, confusions)

    def from_true_labels(self, cell, fit):
        """clean: the true labels, one-hot."""
        k = cell.ann.K
        targets = agg.one_hot(cell.truth % k if cell.grouped else cell.truth, k)
        return Made(fit(targets, cell.algorithm), targets, None)

    def from_model(self, cell, fit):
        """mbem: Algorithm 1 from WMV's model; each round's targets recorded (how many are right, and
        the largest class's share: a collapse shows)."""
        bootstrap = self.bootstrap_model(cell.seed, cell.r, cell.n, cell.ann, fit)
        c = self.config
        targets, confusions, trained, posteriors = mbem(
            cell.ann, bootstrap, lambda posterior, t: fit(posterior, f"mbem round {t + 1}"), c.rounds, c.class_prior,
            c.mbem_step)
        rounds = [{"label_accuracy": cell.accuracy(p), "top_class_share": float(np.bincount(hard).max() / len(hard))}
                  for p, hard in ((p, cell.classes(p.argmax(axis=1))) for p in posteriors)]
        return Made(trained, targets, confusions, extra={"rounds": rounds})

    def from_library(self, cell, fit):
        """CROWDLAB (mbemlib/crowd_methods.py; cleanlab is imported here only): its consensus from
        WMV's model, as MBEM starts from, but out of sample (one model per fold)."""
        from mbemlib import crowd_methods

        tag = f"seed {cell.seed} r {cell.r}"
        bootstrap = self.out_of_fold(agg.weighted_majority_vote(cell.ann), cell.items, cell.seed, tag)
        try:
            targets, estimated = crowd_methods.crowdlab(cell.ann, bootstrap)
        except ValueError as err:
            raise RunError(f"crowdlab: {err}") from err
        return Made(fit(targets, "crowdlab"), targets, None, estimated)

    def from_crowd_head(self, cell, fit):
        """Crowd Layer and CoNAL (mbemlib/crowd_methods.py; torch and crowd-kit are imported here
        only): every (item, worker, label) through a crowd head, no aggregate trained on; WMV's
        targets count the training accuracy only, and the labels it infers are the network's own."""
        from mbemlib import crowd_methods

        c = self.config
        options = {"optimizer": c.conal_optimizer, "omega": c.conal_omega, "separation": c.conal_separation,
                   "seed": cell.seed} if cell.algorithm == "conal" else {"optimizer": c.crowdlayer_optimizer}
        module = crowd_methods.HEADS[cell.algorithm](self.K, cell.ann.m, **options)
        trained = fit(agg.weighted_majority_vote(cell.ann), cell.algorithm,
                      crowd=(module, *crowd_methods.padded(cell.ann)))
        return Made(trained, trained.train_probs, module.confusions())

    def bootstrap_model(self, seed, r, n, ann, fit):
        """MBEM's start, as the release has it: the (final) WMV model's hard predictions on the
        training items, from this run's WMV cell, else from the file a WMV cell left (a resumed
        run), else trained anew and saved like a WMV cell's (a killed MBEM cell then resumes
        without retraining it)."""
        path = store.bootstrap_path(self.config.out, seed, r, n)
        predicted = self.bootstrap.get((seed, r, n))
        if predicted is None:
            predicted = store.load_bootstrap(path, ann)
            if predicted is not None and self.writer:
                print(f"seed {seed} r {r} mbem: bootstrapped from the saved WMV predictions {path}", flush=True)
        if predicted is None:
            trained = fit(agg.weighted_majority_vote(ann), "wmv", epochs=self.config.bootstrap_epochs)
            predicted = self.keep_bootstrap(seed, r, n, ann, trained.train_probs)
        return predicted

    def keep_bootstrap(self, seed, r, n, ann, probs):
        """Keep the WMV model's predictions on its items (in memory and saved); returns their argmax."""
        self.bootstrap[seed, r, n] = probs.argmax(axis=1)
        if self.writer:
            store.save_bootstrap(store.bootstrap_path(self.config.out, seed, r, n), probs, ann)
        return self.bootstrap[seed, r, n]

    def out_of_fold(self, targets, items, seed, tag):
        """Each item's probabilities from a network trained, on these targets, without it
        (crowd_methods.CROWDLAB_FOLDS folds: together one training's images)."""
        from mbemlib import crowd_methods

        folds = []

        def train_and_predict(kept, held):
            folds.append(len(folds) + 1)  # its own checkpoint name
            trained = self.fit(targets[kept], items[kept], seed, f"{tag} wmv fold {folds[-1]}")
            return self.trainer.predict_proba(trained.model, self.ds.train_images[items[held]])

        rng = np.random.default_rng([seed, len(items), agg.REGISTRY["crowdlab"].seed])
        return crowd_methods.out_of_fold(len(items), crowd_methods.CROWDLAB_FOLDS, rng, train_and_predict)

    def fit(self, targets, items, seed, tag, grouped=None, crowd=None, epochs=None):
        """Train on soft targets (twice when two-stage) for `epochs` (default --epochs). Returns a Trained.

        With epoch_images "all" (the release) the network also sees the rest of the training pool,
        after the labelled items, with all-zero targets: no loss gradient, but BatchNorm statistics
        and optimizer steps, as the release's iterator over all 50,000 images gives them.
        With `grouped` the targets are n x g (each item's group: agg.Grouped), assembled into K
        classes batch by batch, and the training items' probabilities come back n x g too.
        crowd = (head, workers, labels) trains end to end on the labels instead (resnet_torch.train),
        never taken for another training on the same targets."""
        c, ds, trainer = self.config, self.ds, self.trainer
        epochs = epochs or c.epochs
        key, given = (seed, store.digest(items), epochs), np.asarray(targets)
        for done, result in self.trained.get(key, []) if crowd is None else []:
            if done.shape == given.shape and np.abs(done - given).max() <= SAME_TARGETS:
                return result
        labelled = ds.train_images[items]
        images = ds.train_images[self.pool] if c.epoch_images == "all" else labelled
        options = {"imagenet": True, "milestones": IMAGENET_DROPS} if self.imagenet else {}
        if crowd is not None:  # each image's labels, the rest of the pool (epoch_images all) with none
            head, workers, labels = crowd
            pad = np.full((len(images) - len(items), workers.shape[1]), -1)
            options["crowd"] = (head, np.concatenate([workers, pad]), np.concatenate([labels, pad]))
        history = []
        for stage in range(2 if c.two_stage else 1):
            checkpoint = self.checkpoint(f"{tag} n {len(items)} stage {stage + 1}", seed, items, targets, crowd, epochs)
            if grouped is not None:
                stage_targets = grouped.batch_targets(targets)
            else:
                stage_targets = np.zeros((len(images), self.K))
                stage_targets[:len(items)] = targets
            model, h = trainer.train(images, stage_targets, self.K, depth=c.depth, epochs=epochs,
                                     batch_size=c.batch_size, lr=c.lr, gpus=c.gpus, seed=seed + stage,
                                     select_epoch=c.select_epoch, val=self.validation,
                                     test=(ds.test_images, ds.test_labels) if c.select_epoch == "test" else None,
                                     pad=c.augment_pad, shuffle=c.shuffle, precision=self.precision,
                                     compile=c.compile, desc=f"{tag} stage {stage + 1}", checkpoint=checkpoint,
                                     epoch_log=self.epoch_log, **options)
            history += [dict(record, stage=stage + 1) for record in h]
            options.pop("crowd", None)  # a second stage trains on the first's predictions
            augment = {"pad": c.augment_pad, "rng": np.random.default_rng([seed, stage])} if c.predict_augmented else {}
            train_probs = trainer.predict_proba(model, labelled, columns=grouped and grouped.columns, **augment)
            targets = agg.one_hot(train_probs.argmax(axis=1), train_probs.shape[1])  # the second stage's targets
        test_probs = trainer.predict_proba(model, ds.test_images) if len(ds.test_images) else None
        result = Trained(train_probs, test_probs, history, model)
        if crowd is None:
            self.trained.setdefault(key, []).append((given.copy(), result))
        return result

    def checkpoint(self, name, seed, items, targets, crowd, epochs):
        """Where a training keeps its state after each epoch (under --out, removed once it is done),
        keyed by everything that decides it: a killed run's next command resumes at that epoch."""
        # epochs is fixed by the config and the training's name, but keyed here as well: a checkpoint
        # of a 10-epoch bootstrap can never resume as a 20-epoch training however names change
        what = [settings.comparable(self.config), seed, name, crowd is not None, self.trainer_code, epochs]
        key = store.digest(np.frombuffer(json.dumps(what, sort_keys=True, default=str).encode(), np.uint8))
        key += store.digest(items) + store.digest(np.asarray(targets))
        return pipeline.Checkpoint(os.path.join(self.config.out, "checkpoints", name.replace(" ", "-") + ".ckpt"), key)

    def write_cell(self, name, items, targets, confusions, trained, grouped):
        """The cell's model under models/, that model's predictions on the images it trained on under
        predictions/ (item,label,p_<class>...; not for grouped classes, whose rows are n x g), and
        with real labels its posterior and confusions under labels/."""
        c, ds = self.config, self.ds
        names = [ds.train_names[i] for i in items] if ds.train_names is not None else [str(i) for i in items]
        store.save_model(self.trainer, trained.model, c.out, name, {
            "classes": list(ds.classes), "depth": c.depth, "imagenet": self.imagenet,
            "in_channels": int(ds.train_images.shape[1]), "backend": c.backend, "precision": self.precision})
        if grouped is None:  # the saved model's own predictions (the release's are on augmented images)
            probs = self.trainer.predict_proba(trained.model, ds.train_images[items]) if c.predict_augmented \
                else trained.train_probs
            store.write_predictions(c.out, name, names, ds.classes, probs)
        if self.real is not None:
            store.write_labels(c.out, name, names, ds.classes, targets, confusions, self.real.worker_names)


    def split(self, ds):
        """The validation set (the dataset's own, as ImageNet's 10,000, else --val-size held out of
        the training images) and the pool the items come from: one fixed shuffle, the same for every
        seed and redundancy, whose first n are a cell's items (class-folder trees come sorted by
        class, so CIFAR's own "first n" needs replacing). Returns the held-out indices."""
        N, c = len(ds.train_images), self.config
        val_size = c.val_size if c.select_epoch == "val" and ds.val_images is None else 0
        if val_size >= N:
            raise RunError(f"--val-size {val_size} leaves none of the {N} training images to train on")
        train_index, val_index = data.validation_split(N, val_size, seed=SPLIT_SEED)
        self.pool = np.random.default_rng(SPLIT_SEED).permutation(train_index)
        self.where = " after the validation split" if val_size else ""
        self.validation = None
        if val_size:
            self.validation = (ds.train_images[val_index], ds.train_labels[val_index])
        elif ds.val_images is not None:
            self.validation = (ds.val_images, ds.val_labels)
        return val_index

    def read_real_labels(self, ds):
        """(--annotations' labels matched to the training images, the dataset with their classes),
        or (None, ds) for simulated workers; `allowed` marks the images that may be items."""
        if not self.config.annotations:
            return None, ds
        try:
            real, classes = crowd.read(self.config.annotations, ds.train_names, ds.classes)
        except InputError as err:
            raise RunError(f"--annotations {err}") from err
        self.allowed = np.zeros(len(ds.train_images), dtype=bool)
        self.allowed[self.pool] = True  # images of the validation split are not trained on
        return real, replace(ds, classes=classes)

    def check_plan(self):
        """The (r, n) cells to run, checked against the images and labels there are; real labels and
        no sweep: every labelled image once (r = 0)."""
        cells = settings.plan(self.config)
        if self.real is not None:
            counts = self.real.per_image(len(self.ds.train_images))[self.allowed]
            cells = cells or [[0, int((counts > 0).sum())]]
            if max(r for r, _ in cells) > counts.max():
                raise RunError(f"a redundancy of {max(r for r, _ in cells)} is above what the annotations have: "
                               f"at most {counts.max()} labels per image{self.where}")
        if min(n for _, n in cells) < 2:
            raise RunError("a cell of fewer than 2 items cannot train (BatchNorm needs 2 images a batch): raise "
                           "the budget or lower the redundancy")
        if too_big := [n for _, n in cells if n > len(self.pool)]:
            raise RunError(f"the plan asks for {max(too_big)} items but only {len(self.pool)} "
                           f"training images are available{self.where}")
        return cells

    def check_truth(self, val_index):
        """What needs a known class has one: simulated workers label by it, a validation split and
        clean labels train or choose on it, a test error needs a test set."""
        c, ds = self.config, self.ds
        known = ds.train_labels >= 0
        if not c.annotations and not known.all():
            raise RunError(f"simulated workers label each image by its class, and {(~known).sum()} training images "
                           "have none: put them in train/<class>/ folders, or give real labels with --annotations")
        if not known[val_index].all():
            raise RunError("--select-epoch val holds out training images of known class, and some have none (not "
                           "under train/<class>/): use --select-epoch last")
        labelled = self.real.per_image(len(known)) > 0 if self.real is not None else known
        if "clean" in c.algorithms and not known[labelled].all():
            raise RunError("--algorithms clean trains on the true classes, and some labelled images have none (not "
                           "under train/<class>/)")
        if not len(ds.test_images) and (c.select_epoch == "test" or not c.annotations):
            raise RunError("no test set: --source needs test/<class>/<image> for a test error (with real labels and "
                           "no test set, use --select-epoch last)")


TARGET_MAKERS = {"labels": Experiment.from_labels, "model": Experiment.from_model,
                 "true confusions": Experiment.from_true_confusions, "true labels": Experiment.from_true_labels,
                 "library": Experiment.from_library, "crowd head": Experiment.from_crowd_head}


def dry_run(config, experiment, cells, speed=None):
    """Print the resolved settings, the cells and trainings to run, and a time estimated from a few
    timed batches of this machine (or at `speed` img/s, given); train and write nothing else."""
    print("settings: " + ", ".join(f"{k}={v}" for k, v in asdict(config).items()))
    for seed, r, n, algorithm in cells:
        print(f"  cell seed {seed} r {r} n {n} {algorithm}")
    stages = 2 if config.two_stage else 1
    batch = min(config.batch_size, len(experiment.pool))
    timed = f"3 timed batches of {batch} here, {experiment.precision}"
    if speed is None:
        sample = experiment.ds.train_images[experiment.pool[:3 * batch]]
        _, history = experiment.trainer.train(sample, np.full((len(sample), experiment.K), 1 / experiment.K),
                                              experiment.K, depth=config.depth, epochs=2, batch_size=batch,
                                              gpus=config.gpus, precision=experiment.precision,
                                              compile=config.compile, pad=config.augment_pad, progress=False,
                                              imagenet=experiment.imagenet)
        speed = history[-1]["img_per_s"]
    else:
        timed = "given by --speed"
    saved = lambda s, r, n: os.path.exists(store.bootstrap_path(config.out, s, r, n))  # noqa: E731
    per_epoch = {(s, r, n): len(experiment.pool) if config.epoch_images == "all" else n for s, r, n, _ in cells}
    shares = {c: settings.trainings(config, c, cells, saved) for c in cells}
    images = round(sum(sum(shares[c]) * stages * config.epochs * per_epoch[c[:3]] for c in cells))
    bootstrap = f" (MBEM's WMV model {config.bootstrap_epochs})" if config.bootstrap_epochs else ""
    print(f"{len(cells)} cells, at most {sum(map(len, shares.values())) * stages} trainings ({stages} stage"
          f"{'s' * (stages > 1)} each) of {config.epochs} epochs{bootstrap}: {images:,} training images; at "
          f"{speed:.0f} img/s ({timed}) about {format_seconds(images / speed)}, evaluation not counted")
    return 0


def progress(work, cell, elapsed):
    """The sweep's line after `cell`: cells done of all, time so far, and the time left if the rest
    goes as fast per item trained (`work`: each cell's items, times MBEM's rounds)."""
    finished = list(work).index(cell) + 1
    done = sum(list(work.values())[:finished])
    rest = sum(work.values()) - done
    return (f"[{finished} of {len(work)} cells] {format_seconds(elapsed)} so far, about "
            f"{format_seconds(elapsed * rest / max(done, 1))} left")


def shown(value, digits):
    """A figure for a progress line: '-' where the run has none (no test set, no known classes)."""
    return "-" if value is None else f"{value:.{digits}f}"


def order(algorithms):
    """The order cells run in: as given, but MBEM right after WMV, whose model it bootstraps from
    (so the comparison the paper is about lands first in a long run)."""
    rest = [a for a in algorithms if a != "mbem"]
    if "mbem" not in algorithms:
        return rest
    at = rest.index("wmv") + 1 if "wmv" in rest else len(rest)
    return rest[:at] + ["mbem"] + rest[at:]


# ----------------------------------------------------------------------------- the sweep: seeds -> (r, n) -> methods

def main(argv=None):
    config, args, parser = settings.parse(argv, __doc__)
    if args.plot_only:
        if not os.path.exists(os.path.join(config.out, "results.json")):
            parser.error(f"--plot-only: no {os.path.join(config.out, 'results.json')}")
        report.report(store.load_results(config, check_config=False), config.out)
        return 0
    settings.check(parser, config, args)
    check_devices(parser, config)
    rank = join_processes(config)
    if rank == 0:
        store.check_writable(config.out)
    store.load_results(config)  # a different config there is refused before the data loads
    ds = load_images(config)
    experiment = Experiment(config, ds, writer=rank == 0, verbose=args.verbose)
    if rank == 0 and not args.dry_run:  # one run per folder: a second would overwrite the first's cells
        if note := store.hold(config.out):
            print(note, file=sys.stderr, flush=True)
    results = store.load_results(config)  # read again now that no other run can be writing it
    done = {(c["seed"], c["redundancy"], c["n"], c["algorithm"]) for c in results["cells"]}
    warning = store.resume_warning(results, config.out) if done and rank == 0 else None
    results["commit"], results["versions"], results["machine"] = store.environment()
    if problem := store.precision_problem(results, experiment.precision):
        raise RunError(problem)
    todo = [(s, r, n, a) for s in config.seeds for r, n in experiment.plan for a in order(config.algorithms)
            if agg.runs_at(a, r)]
    left = [cell for cell in todo if cell not in done]
    if args.dry_run:
        return dry_run(config, experiment, left, args.speed)
    if left and warning:  # cells to add to a folder made by other trainer code
        print(warning, file=sys.stderr, flush=True)
    if not left:  # a finished folder stays as it is (its figures too): --plot-only redraws them
        if rank == 0:
            print(f"all {len(todo)} cells of {config.out} are done; --plot-only redraws its tables and figures",
                  flush=True)
        return 0
    if rank == 0:
        if any(not agg.runs_at(a, r) for r, _ in experiment.plan for a in config.algorithms):
            print("crowdlab: no r = 1 cells (cleanlab refuses items that have one label each)", flush=True)
        print(f"{len(left)} of {len(todo)} cells to run; results in {config.out}, every epoch in "
              f"{experiment.epoch_log.path}{'' if args.verbose else ' (-v: on the screen too)'}", flush=True)
    work, started = {cell: cell[2] * (config.rounds if cell[3] == "mbem" else 1) for cell in left}, time.time()
    for seed in config.seeds:
        workers = None if config.annotations else noise_sim.simulate_workers(
            config.workers, experiment.K, config.gamma, np.random.default_rng(seed), config.worker_model,
            config.group_size)
        for r, n in experiment.plan:
            items, ann, true_accuracy = experiment.labels(seed, r, n, workers)
            for algorithm in order(config.algorithms):
                if (seed, r, n, algorithm) in done or not agg.runs_at(algorithm, r):
                    continue
                start = time.perf_counter()
                record = experiment.cell(seed, r, n, algorithm, workers, items, ann, true_accuracy)
                results["cells"].append(record)
                results["wall_seconds"] += time.perf_counter() - start
                if rank == 0:  # under torchrun every process computes the cell; one writes it
                    store.save(results, config.out)
                    print(f"seed {seed} r {r} n {n} {algorithm}: test error {shown(record['test_error'], 4)} label "
                          f"accuracy {shown(record['label_accuracy'], 3)} ({record['wall_seconds']:.0f} s)", flush=True)
                    print(progress(work, (seed, r, n, algorithm), time.time() - started), flush=True)
    if rank == 0:
        try:
            os.makedirs(config.out, exist_ok=True)
            report.report(results, config.out)
        except OSError as err:
            raise RunError(f"cannot write the tables and figures in {config.out} ({err.strerror or err}); "
                           "results.json has every cell: make room and run with --plot-only") from err
    return 0


# ----------------------------------------------------------------------------- the machine: trainers, devices, images

def trainer(backend):
    """The backend switch: resnet (MXNet) or resnet_torch (PyTorch), imported when first needed (each
    framework is optional). Both import mbemlib.pipeline, which imports neither."""
    try:
        if backend == "mxnet":
            import resnet

            return resnet
        import resnet_torch

        return resnet_torch
    except ImportError as err:
        raise RunError(f"{INSTALL['mxnet' if backend == 'mxnet' else 'torch']} ({err})") from err


def gpu_count(backend):
    """How many GPUs the backend can use on this machine (0 for a CPU build)."""
    if backend == "torch":
        import torch

        return torch.cuda.device_count()
    return trainer("mxnet").mx.context.num_gpus()  # through resnet: it sets MXNet's thread count first


def check_devices(parser, config):
    """--gpus this machine has, one process per GPU for torch, and bf16 where it runs: one line each
    (after settings.check, which has made sure the backend is installed)."""
    if config.gpus:
        ids, available = ",".join(map(str, config.gpus)), gpu_count(config.backend)
        if max(config.gpus) >= available:
            parser.error(f"--gpus {ids}: {config.backend} sees {available or 'no'} GPU{'s' * (available != 1)} "
                         "here (leave --gpus out to train on the CPU)")
        if config.backend == "torch" and len(config.gpus) > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
            parser.error(f"--gpus {ids}: the torch backend runs one process per GPU, started by torchrun: torchrun "
                         f"--nproc_per_node {len(config.gpus)} MBEM.py ... --gpus {ids}")
    if config.backend == "torch" and config.precision == "bf16":  # refused before the data is loaded
        try:
            trainer("torch").resolve_precision("bf16", config.gpus)
        except ValueError as err:
            parser.error(str(err))


def load_images(config):
    """The images of --dataset (digits, imagenet, folder, cifar10), or a RunError in one line: the
    dispatch lives here, with its caller, so that mbemlib.imagenet (which builds on dataset.Dataset)
    and mbemlib.dataset never import each other."""
    try:
        if config.dataset == "digits":
            return data.load_digits()
        if config.dataset == "imagenet":
            from mbemlib import imagenet

            return imagenet.load(config.source, config.val_size, config.image_size, config.loader_workers)
        if config.dataset == "folder":
            return data.load_folder(config.source, config.data_dir)
    except (OSError, ValueError) as err:
        raise RunError(str(err)) from err
    try:
        return data.load_cifar10(config.data_dir)
    except OSError as err:
        raise RunError(f"cannot get CIFAR-10 ({err}). Offline? Use --dataset folder --source "
                       "PATH with a class-folder copy, e.g. ../shared/data/cifar10-jpeg.tar.gz") from err


def join_processes(config):
    """This process's rank: 0 alone, or its rank under torchrun (the torch backend only)."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0
    if config.backend != "torch":
        raise RunError("torchrun starts data-parallel runs of the torch backend only: add --backend torch")
    return trainer("torch").join_processes(config.gpus)


def command(argv=None):
    """main() as the command line runs it: the exit status, and a RunError or Ctrl-C as one line."""
    try:
        return main(argv)
    except RunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished cells are saved; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(command())
