"""fashion_trainer: MMF's BaseTrainer with what fashion pretraining needs.

Cheatsheet (YAML)::

    training:
      trainer: fashion_trainer
      amp: {enabled: true, dtype: bfloat16}   # torch.amp autocast; float16 adds a GradScaler
      update_frequency: 4                     # gradient accumulation
      clip_gradients: true
      max_grad_l2_norm: 1.0
      channels_last: true
      compile: false                          # torch.compile the model
      on_nonfinite_loss: stop                 # or skip
    optimizer:
      lr_multipliers: {image_encoder: 20.0}   # by parameter-name prefix

Adds to rc10: DDP on CPU (gloo) as well as CUDA, a data order that depends
only on (seed, epoch) so a resume continues exactly, atomic weights-only
checkpoints with RNG/scheduler/scaler state, guarded losses, and results in
<save_dir>/metrics.json after every evaluation.

training.tensorboard: true writes the train.jsonl and metrics.jsonl records as
tensorboard scalars (rank 0) into env.tensorboard_logdir or
<save_dir>/tensorboard; MMF's own writer is never built, since load() is ours.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Dict, List

import torch
from mmf.common.registry import registry
from mmf.common.sample import SampleList
from mmf.trainers.base_trainer import BaseTrainer
from mmf.utils.build import build_dataset, build_model, build_scheduler
from mmf.utils.configuration import get_mmf_env
from omegaconf import OmegaConf, open_dict

from mmf_fashion.modules import distributed as dist_utils
from mmf_fashion.trainers import checkpointing as ckpt
from mmf_fashion.trainers.evaluation import (
    AccumulatedReport,
    Accumulator,
    MetricSet,
    write_results,
    write_scalars,
    write_train_record,
)
from mmf_fashion.trainers.loaders import ResumableSampler, build_loader, per_rank_batch_size
from mmf_fashion.utils.optional import require
from mmf_fashion.utils.run_log import run_writer


class NonFiniteLossError(FloatingPointError):
    pass


@registry.register_trainer("fashion_trainer")
class FashionTrainer(BaseTrainer):
    """MMF trainer with AMP, accumulation, exact resume, safe checkpoints and metrics.json."""

    # ------------------------------------------------------------------ set-up
    def load(self):
        # MMF's order (BaseTrainer.load on MMF main); each step is one of
        # BaseTrainer's abstract methods, so the class is complete on both MMFs
        self.run_type = self.config.get("run_type", "train")
        self.writer = run_writer(self.config)
        self.training_config = self.config.training
        self.save_dir = get_mmf_env(key="save_dir")
        os.makedirs(self.save_dir, exist_ok=True)
        self.configure_device()
        self.configure_seed()
        self.load_datasets()
        self.load_model()
        self.load_optimizer()
        self._restore_and_wrap()
        self.load_metrics()
        self.configure_callbacks()

    def configure_callbacks(self):
        # MMF's callbacks (LR scheduler, checkpointing, early stop) belong to its
        # own loop; this trainer does those steps itself, plus tensorboard
        self._setup_tensorboard()

    def load_metrics(self):
        self.metrics = MetricSet(self.config.evaluation.get("metrics", []))

    def _setup_tensorboard(self):
        """MMF's key and folder (training.tensorboard, env.tensorboard_logdir), set
        up here because BaseTrainer.load, which builds MMF's writer, is replaced."""
        self.tb_writer = None
        if not self.training_config.get("tensorboard", False) or dist_utils.get_rank() != 0:
            return
        require("tensorboard", "training.tensorboard=true")
        from torch.utils.tensorboard import SummaryWriter

        log_dir = get_mmf_env(key="tensorboard_logdir") or os.path.join(self.save_dir, "tensorboard")
        self.tb_writer = SummaryWriter(log_dir)
        self.writer.write(f"Tensorboard scalars in {log_dir}", "info")

    def configure_device(self):
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.config.get("device_id", 0) or 0))
        if torch.cuda.is_available() and "cuda" in str(self.config.training.device):
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        self.distributed = dist_utils.is_distributed()
        registry.register("current_device", self.device)
        registry.register("global_device", self.device)

    def configure_seed(self):
        # mmf_run seeds the RNGs (MMF main with seed + rank, rc10 with the same
        # seed everywhere). The data order must be one permutation shared by
        # all ranks, so the samplers use rank 0's seed.
        self.data_seed = int(dist_utils.broadcast_from_rank0(int(self.training_config.seed or 0)))
        if self.training_config.seed is not None:
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False

    def _dataset_names(self) -> List[str]:
        names = self.config.datasets
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",") if n.strip()]
        return list(names)

    def load_datasets(self):
        self.writer.write("Loading datasets", "info")
        seed = self.data_seed
        world, rank = dist_utils.get_world_size(), dist_utils.get_rank()
        self.batch_size = per_rank_batch_size(int(self.training_config.batch_size), world)
        self.loaders: Dict[str, list] = {"train": [], "val": [], "test": []}
        self.samplers: Dict[str, list] = {"train": [], "val": [], "test": []}
        wanted = ["val", "test"] + (["train"] if "train" in self.run_type else [])
        for split in wanted:
            for name in self._dataset_names():
                if name not in self.config.dataset_config:
                    raise ValueError(f"Dataset '{name}' has no entry in dataset_config")
                dataset = build_dataset(name, self.config.dataset_config[name], split)
                if dataset is None or len(dataset) == 0:
                    continue
                train = split == "train"
                sampler = ResumableSampler(len(dataset), seed, shuffle=train, rank=rank, world_size=world, pad=train)
                loader = build_loader(
                    dataset,
                    self.batch_size,
                    sampler,
                    num_workers=int(self.training_config.num_workers),
                    pin_memory=bool(self.training_config.pin_memory) and self.device.type == "cuda",
                    drop_last=train and len(dataset) // world >= self.batch_size,
                    seed=seed,
                    persistent_workers=bool(self.training_config.get("persistent_workers", True)),
                )
                self.loaders[split].append(loader)
                self.samplers[split].append(sampler)
        if "train" in self.run_type and not self.loaders["train"]:
            raise ValueError(f"No training data found for datasets {self._dataset_names()}")

    # ------------------------------------------------------------------ model
    def load_model(self):
        attributes = self.config.model_config[self.config.model]
        if isinstance(attributes, str):
            attributes = self.config.model_config[attributes]
        with open_dict(attributes):
            attributes.model = self.config.model
        # files the model reads while it builds (tokenizer, encoder weights) follow checkpoint.allow_unsafe_load
        with ckpt.unsafe_loading(ckpt.unsafe_load_allowed(self.config)):
            self.model = build_model(attributes).to(self.device)
        if self.training_config.get("channels_last", False):
            self.model = self.model.to(memory_format=torch.channels_last)

    def load_optimizer(self):
        self.optimizer = self._build_optimizer()
        self.lr_scheduler = build_scheduler(self.optimizer, self.config) if self.training_config.lr_scheduler else None
        amp = self.training_config.get("amp", {}) or {}
        self.amp_enabled = bool(amp.get("enabled", False))
        self.amp_dtype = getattr(torch, str(amp.get("dtype", "bfloat16")))
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_enabled and self.amp_dtype == torch.float16
        )
        self.update_frequency = max(1, int(self.training_config.get("update_frequency", 1)))

    def _restore_and_wrap(self):
        """Counters, the checkpoint to resume from (if any), then DDP / compile."""
        self.num_updates = 0
        self.current_iteration = 0
        self.current_epoch = 0
        self.batches_in_epoch = 0
        self.skipped_nonfinite = 0
        self._load_checkpoint_if_any()
        registry.register("num_updates", self.num_updates)
        self.train_model = self.model
        if self.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=device_ids,
                find_unused_parameters=bool(self.training_config.find_unused_parameters),
            )
        if self.training_config.get("compile", False):
            self.train_model = torch.compile(self.train_model)

    def _build_optimizer(self):
        optimizer_config = self.config.optimizer
        params = dict(optimizer_config.get("params", {}) or {})
        base_lr = float(params.get("lr", 1e-4))
        multipliers = dict(optimizer_config.get("lr_multipliers", {}) or {})
        if hasattr(self.model, "get_optimizer_parameters"):
            groups = self.model.get_optimizer_parameters(self.config)
        else:
            grouped: Dict[float, list] = {}
            for name, parameter in self.model.named_parameters():
                if not parameter.requires_grad:
                    continue
                multiplier = next((m for prefix, m in multipliers.items() if name.startswith(prefix)), 1.0)
                grouped.setdefault(float(multiplier), []).append(parameter)
            groups = [{"params": ps, "lr": base_lr * m, "lr_multiplier": m} for m, ps in sorted(grouped.items())]
        optimizer_type = optimizer_config.type
        if hasattr(torch.optim, optimizer_type):
            optimizer_class = getattr(torch.optim, optimizer_type)
        else:
            optimizer_class = registry.get_optimizer_class(optimizer_type)
            if optimizer_class is None:
                raise ValueError(f"Unknown optimizer '{optimizer_type}' (torch.optim or MMF registry)")
        return optimizer_class(groups, **params)

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_paths(self):
        prefix = self.config.model
        return {
            "current": os.path.join(self.save_dir, "current.ckpt"),
            "models": os.path.join(self.save_dir, "models"),
            "final": os.path.join(self.save_dir, f"{prefix}_final.pth"),
        }

    def _load_checkpoint_if_any(self):
        config = self.config.checkpoint
        allow_unsafe = ckpt.unsafe_load_allowed(self.config)  # checkpoint.allow_unsafe_load, an explicit true only
        current = self._checkpoint_paths()["current"]
        if config.resume and os.path.exists(current):
            self._resume_from(ckpt.safe_torch_load(current, allow_unsafe=allow_unsafe), current)
            return
        # `checkpoint.resume_file=null` on the command line is None (the bridge decodes it as YAML does)
        if config.resume_file:
            if not os.path.exists(config.resume_file):
                raise FileNotFoundError(f"checkpoint.resume_file={config.resume_file}: no such file")
            state = ckpt.safe_torch_load(config.resume_file, allow_unsafe=allow_unsafe)
            from mmf_fashion.convert import fashionvil as official_fashionvil
            from mmf_fashion.convert import xvlm as official_xvlm

            # a released FashionViL (the authors' MMF fork) or X-VLM file: weights only, renamed
            # to ours; its optimizer state is for another parameter layout
            for official in (official_fashionvil, official_xvlm):
                if official.is_official(state):
                    report = official.load_official(self.model, state, source=config.resume_file)
                    self.writer.write("\n".join(report.lines()), "info")
                    return
            if config.resume_pretrained:
                weights = state.get("model", state) if isinstance(state, dict) else state
                mapping = dict(config.get("pretrained_state_mapping", {}) or {})
                weights = ckpt.apply_state_mapping(weights, mapping)
                missing, unexpected = ckpt.load_model_state(
                    self.model, weights, strict=False, source=config.resume_file
                )
                self.writer.write(
                    f"Pretrained weights from {config.resume_file}: {len(weights) - len(unexpected)} tensors loaded; "
                    f"not in checkpoint ({len(missing)}): {missing[:10]}; "
                    f"unused ({len(unexpected)}): {unexpected[:10]}",
                    "info",
                )
            else:
                self._resume_from(state, config.resume_file)

    def _resume_from(self, state, source):
        ckpt.load_model_state(self.model, state["model"], strict=True, source=source)
        if not self.config.checkpoint.reset.optimizer and "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.lr_scheduler is not None and state.get("lr_scheduler") is not None:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        if not self.config.checkpoint.reset.counts:
            self.num_updates = int(state.get("num_updates", 0))
            self.current_iteration = int(state.get("current_iteration", 0))
            self.current_epoch = int(state.get("current_epoch", 0))
            self.batches_in_epoch = int(state.get("batches_in_epoch", 0))
        if state.get("rng") is not None:
            self._resume_rng = state["rng"]
        self.writer.write(f"Resumed from {source} at update {self.num_updates}", "info")

    def save_checkpoint(self):
        if not torch.distributed.is_initialized() or dist_utils.get_rank() == 0:
            bad = ckpt.non_finite_parameters(self.model.state_dict().items())
            if bad:
                raise NonFiniteLossError(
                    f"Refusing to save a non-finite model at update {self.num_updates} "
                    f"(e.g. {bad[:5]}); the previous checkpoint is kept."
                )
            paths = self._checkpoint_paths()
            state = {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "num_updates": self.num_updates,
                "current_iteration": self.current_iteration,
                "current_epoch": self.current_epoch,
                "batches_in_epoch": self.batches_in_epoch,
                "rng": ckpt.capture_rng(),
                "config": OmegaConf.to_container(self.config, resolve=True),
            }
            numbered = os.path.join(paths["models"], f"model_{self.num_updates}.ckpt")
            ckpt.atomic_torch_save(state, numbered)
            ckpt.atomic_torch_save(state, paths["current"])
            self._prune_numbered(paths["models"])
        if torch.distributed.is_initialized():
            torch.distributed.barrier()

    def _prune_numbered(self, folder):
        keep = int(self.training_config.get("keep_last_checkpoints", 0) or 0)
        if keep <= 0:
            return
        files = sorted(
            (f for f in os.listdir(folder) if f.startswith("model_") and f.endswith(".ckpt")),
            key=lambda f: int(f[len("model_") : -len(".ckpt")]),
        )
        for name in files[:-keep]:
            os.remove(os.path.join(folder, name))

    # ------------------------------------------------------------------ training
    def train(self):
        self.writer.write(f"===== Model =====\n{self.model}", "debug")
        if "train" not in self.run_type:
            self.inference()
            return
        if getattr(self, "_resume_rng", None) is not None:
            ckpt.restore_rng(self._resume_rng)
        max_updates = self.training_config.max_updates
        if self.training_config.max_epochs is not None:
            per_epoch = sum(len(loader) for loader in self.loaders["train"]) // self.update_frequency
            max_updates = int(self.training_config.max_epochs) * max(1, per_epoch)
        self.max_updates = int(max_updates)
        self._set_train_mode()
        self._timer = time.time()
        self._start_update = self.num_updates
        self.writer.write(f"Starting training at update {self.num_updates} of {self.max_updates}", "info")
        while self.num_updates < self.max_updates:
            finished_epoch = self._run_epoch()
            if finished_epoch:
                self.current_epoch += 1
                self.batches_in_epoch = 0
        if self.num_updates % int(self.training_config.evaluation_interval) != 0:
            self.evaluate_split("val")
        self._finalize()

    def _set_train_mode(self):
        self.model.train()
        if self.training_config.get("freeze_batchnorm", False):
            # frozen running statistics: per-rank batch statistics would make a
            # DDP run differ from one process with the same global batch
            for module in self.model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def _epoch_batches(self):
        """Interleave the train loaders of several datasets in a seeded order."""
        for sampler in self.samplers["train"]:
            sampler.set_epoch(self.current_epoch)
        if len(self.loaders["train"]) == 1:
            self.samplers["train"][0].skip_batches(self.batches_in_epoch, self.batch_size)
            yield from self.loaders["train"][0]
            return
        lengths = [len(loader) for loader in self.loaders["train"]]
        order = []
        for index, length in enumerate(lengths):
            order += [index] * length
        generator = torch.Generator().manual_seed(self.data_seed * 7919 + self.current_epoch)
        order = [order[i] for i in torch.randperm(len(order), generator=generator).tolist()]
        iterators = [iter(loader) for loader in self.loaders["train"]]
        for position, index in enumerate(order):
            batch = next(iterators[index])
            if position < self.batches_in_epoch:
                continue
            yield batch

    def _run_epoch(self) -> bool:
        accumulated = 0
        seen = 0
        for batch in self._epoch_batches():
            seen += 1
            self.current_iteration += 1
            self.batches_in_epoch += 1
            accumulated += 1
            last_micro = accumulated == self.update_frequency
            losses = self._forward_backward(batch, sync=last_micro)
            if not last_micro:
                continue
            accumulated = 0
            self._optimizer_step(losses)
            if self.num_updates >= self.max_updates:
                return False
        if seen == 0 and self.batches_in_epoch == 0:
            raise ValueError("The training loader produced no batch: is the dataset smaller than training.batch_size?")
        return True

    def _autocast(self):
        if not self.amp_enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _prepare(self, batch) -> SampleList:
        if not isinstance(batch, SampleList):
            batch = SampleList(batch)
        return batch.to(self.device)

    def _record_sample_ids(self, batch) -> None:
        """training.log_sample_ids: which samples each rank trained on (to check DDP sharding)."""
        ids = batch.get("image_id", batch.get("product_id", None)) if hasattr(batch, "get") else None
        if ids is None:
            return
        path = os.path.join(self.save_dir, f"sample_ids_rank{dist_utils.get_rank()}.txt")
        with open(path, "a") as f:
            f.write(" ".join(str(int(i)) for i in ids.view(-1).tolist()) + "\n")

    def _forward_backward(self, batch, sync: bool):
        batch = self._prepare(batch)
        if self.training_config.get("log_sample_ids", False):
            self._record_sample_ids(batch)
        no_sync = (
            self.train_model.no_sync
            if (self.distributed and not sync and hasattr(self.train_model, "no_sync"))
            else contextlib.nullcontext
        )
        with no_sync():
            with self._autocast():
                output = self.train_model(batch)
            losses = output.get("losses") or {}
            if not losses:
                raise ValueError(
                    f"Model '{self.config.model}' returned no losses at update {self.num_updates + 1}; "
                    "check model_config.*.losses or the model's head"
                )
            loss = sum(value.float().mean() for value in losses.values())
            finite = torch.isfinite(loss.detach()).to(torch.float32)
            if self.distributed:
                torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
            self._step_finite = getattr(self, "_step_finite", True) and bool(finite.item())
            if self._step_finite:
                self.scaler.scale(loss / self.update_frequency).backward()
        self._last_losses = {k: float(v.detach().float().mean()) for k, v in losses.items()}
        return self._last_losses

    def _optimizer_step(self, losses):
        if not self._step_finite:
            self._step_finite = True
            self.optimizer.zero_grad(set_to_none=True)
            message = f"Non-finite loss at update {self.num_updates + 1}: {losses}"
            if self.training_config.get("on_nonfinite_loss", "stop") == "skip":
                self.skipped_nonfinite += 1
                self.writer.write(message + f" -> step skipped ({self.skipped_nonfinite} so far)", "warning")
                return
            raise NonFiniteLossError(message + " (set training.on_nonfinite_loss=skip to skip such steps)")
        if self.training_config.clip_gradients:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(self.training_config.max_grad_l2_norm))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        self.num_updates += 1
        registry.register("num_updates", self.num_updates)
        self._logistics_after_update(losses)

    def _mean_over_ranks(self, losses: Dict[str, float]) -> Dict[str, float]:
        """The logged training losses are those of the global batch: the mean of
        every rank's loss (rank 0's alone is the loss of its shard only). Every
        rank logs at the same updates with the same loss names, so this is safe."""
        if not self.distributed or not losses:
            return losses
        names = sorted(losses)
        values = torch.tensor([losses[name] for name in names], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(values)
        world = dist_utils.get_world_size()
        return {name: value / world for name, value in zip(names, values.tolist())}

    def _terminal_bar(self):
        """A tqdm bar over the updates (rate, ETA) when rank 0's stderr is a terminal;
        None otherwise: logs, pipes and `make demo` keep the plain progress lines."""
        import sys

        bar = getattr(self, "_progress_bar", None)
        if bar is None and not hasattr(self, "_progress_bar"):
            is_terminal = getattr(sys.stderr, "isatty", lambda: False)()
            if is_terminal and dist_utils.get_rank() == 0:
                from tqdm import tqdm

                # started at this run's first update: a resume counts from its checkpoint
                bar = tqdm(
                    total=self.max_updates,
                    initial=self.num_updates - 1,
                    unit="update",
                    desc="training",
                    file=sys.stderr,
                    dynamic_ncols=True,
                )
            self._progress_bar = bar
        return bar

    def _interval_means(self, losses: Dict[str, float]) -> Dict[str, float]:
        """Adds this update's losses; returns each loss averaged over the updates since the
        last log line where it was computed. Pretraining computes one task per update, so a
        record of the last update alone would show one task of six at each log interval."""
        sums = self.__dict__.setdefault("_interval_loss_sums", {})
        for name, value in losses.items():
            total, count = sums.get(name, (0.0, 0))
            sums[name] = (total + float(value), count + 1)
        return {name: total / count for name, (total, count) in sums.items()}

    def _logistics_after_update(self, losses):
        interval = int(self.training_config.log_interval)
        bar = self._terminal_bar()
        if bar is not None:
            bar.update(self.num_updates - bar.n)
        means = self._interval_means(losses)
        if self.num_updates % interval == 0 or self.num_updates == self.max_updates:
            self._interval_loss_sums = {}
            losses = self._mean_over_ranks(means)
            elapsed = time.time() - self._timer
            done = self.num_updates - self._start_update
            rate = done / max(elapsed, 1e-9)
            eta = (self.max_updates - self.num_updates) / max(rate, 1e-9)
            loss_text = ", ".join(f"{k.split('/')[-1]}: {v:.4f}" for k, v in sorted(losses.items()))
            if dist_utils.get_rank() == 0:
                samples = rate * int(self.training_config.batch_size) * self.update_frequency
                device = getattr(self, "device", None)
                on_cuda = device is not None and torch.device(device).type == "cuda"
                memory = torch.cuda.max_memory_allocated(device) / 2**30 if on_cuda else None
                record = write_train_record(
                    self.save_dir, losses, self.optimizer.param_groups[0]["lr"], samples, self.num_updates, memory
                )
                write_scalars(getattr(self, "tb_writer", None), record)
            if bar is not None:
                bar.set_postfix_str(f"loss: {sum(losses.values()):.4f}, lr: {self.optimizer.param_groups[0]['lr']:.2e}")
            # the log keeps its plain lines either way; the bar steps aside while one is written
            with bar.external_write_mode() if bar is not None else contextlib.nullcontext():
                self.writer.write(
                    f"progress: {self.num_updates}/{self.max_updates}, {loss_text}, "
                    f"lr: {self.optimizer.param_groups[0]['lr']:.2e}, ups: {rate:.2f}, "
                    f"eta: {time.strftime('%H:%M:%S', time.gmtime(eta))}",
                    "info",
                )
        if bar is not None and self.num_updates >= self.max_updates:
            bar.close()
            self._progress_bar = None
        if self.num_updates % int(self.training_config.checkpoint_interval) == 0:
            self.save_checkpoint()
        if self.num_updates % int(self.training_config.evaluation_interval) == 0:
            self.evaluate_split("val")

    # ------------------------------------------------------------------ evaluation
    def evaluate_split(self, split: str) -> Dict[str, float]:
        """Evaluate every dataset of a split; RNG-neutral, so training continues identically."""
        rng = ckpt.capture_rng()
        values: Dict[str, float] = {}
        was_training = self.model.training
        self.model.eval()
        try:
            for loader in self.loaders[split]:
                fields = set(self.metrics.required_params) | {"losses"}
                accumulator = Accumulator(fields)
                with torch.no_grad():
                    for batch in loader:
                        batch = self._prepare(batch)
                        with self._autocast():
                            output = self.model(batch)
                        accumulator.add(batch, output)
                dataset = loader.dataset
                report = AccumulatedReport(accumulator.report())
                report["dataset_type"] = split
                report["dataset_name"] = dataset.dataset_name
                for key, value in accumulator.mean_losses().items():
                    values[f"{key}" if key.startswith(split) else f"{split}/{dataset.dataset_name}/{key}"] = value
                values.update(
                    self.metrics.compute(report, split, dataset.dataset_name, model=self.model, dataset=dataset)
                )
        finally:
            if was_training:
                self._set_train_mode()
            ckpt.restore_rng(rng)
        if values and dist_utils.get_rank() == 0:
            record = write_results(self.save_dir, values, self.num_updates)
            write_scalars(getattr(self, "tb_writer", None), record)
            shown = ", ".join(f"{k}: {v:.4f}" for k, v in record.items() if k != "num_updates")
            self.writer.write(f"{split} at update {self.num_updates}: {shown}", "info")
        return values

    def inference(self):
        results = {}
        if "val" in self.run_type:
            results.update(self.evaluate_split("val"))
        if any(rt in self.run_type for rt in ("inference", "test", "predict")):
            results.update(self.evaluate_split("test"))
        return results

    def _finalize(self):
        self.save_checkpoint()
        if dist_utils.get_rank() == 0:
            ckpt.atomic_torch_save(self.model.state_dict(), self._checkpoint_paths()["final"])
        if self.skipped_nonfinite:
            self.writer.write(f"{self.skipped_nonfinite} update(s) skipped for non-finite losses", "warning")
        if any(rt in self.run_type for rt in ("inference", "test", "predict")):
            self.evaluate_split("test")
        for split in ("train", "val", "test"):
            for loader in self.loaders[split]:
                # only splits that skipped something (summary() is never empty)
                counter = getattr(loader.dataset, "bad_samples", None)
                if counter is not None and counter.total:
                    self.writer.write(f"{split}/{loader.dataset.dataset_name}: {counter.summary()}", "warning")
