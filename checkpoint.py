"""Model files: this project's checkpoints, OpenAI's GPT-2 weights, exact random state, and what resuming checks.

    from checkpoint import load_model
    model, tokenizer, state = load_model("out-shakespeare-char")   # ckpt.pt of a run
    model, tokenizer, state = load_model("gpt2")                   # OpenAI's GPT-2, downloaded once

Two files live in out_dir: `ckpt.pt`, the model with the best val loss (what
sample.py loads), and `last.pt`, the latest full training state (what
--init_from=resume continues from). Both are written whole or not at all
(common.atomic_write). Loading uses torch.load(weights_only=True): tensors and
plain containers only, never arbitrary pickled objects.

GPT-2's weights come as Hugging Face's model.safetensors, a format simple enough
to read here: an 8-byte little-endian header length, a JSON header of name ->
dtype, shape and data_offsets, then the raw bytes of the tensors.
"""
import json
import math
import os
import random
import struct
from dataclasses import asdict, replace

import numpy as np
import torch

from common import UserError, atomic_write, commit, discard, download, write_pending
from model import GPT, GPTConfig, build_model
from tokenizer import GPT2Tokenizer, load_tokenizer

BEST = "ckpt.pt"
LAST = "last.pt"
# Model settings that may differ on resume: they change the run, not the weights' shapes.
RESUMABLE_MODEL_KEYS = ("dropout", "attention")
# What last.pt holds besides the model; ckpt.pt, the best model for sampling, has none of it.
TRAINING_KEYS = ("optimizer", "iter_num", "best_val_loss", "rng", "train_config", "tokenizer", "tokens", "elapsed")


# --------------------------------------------------------------------------- writing

def save_checkpoint(state, path):
    """Write state to path atomically: the old file stays whole until the new one is complete."""
    atomic_write(path, lambda f: torch.save(state, f))


class LastCheckpoint:
    """out_dir/last.pt, put in place only once the weights it holds have given a finite loss.

    Training writes it to its temporary file; an evaluation, or the next step's
    loss, proves the weights, and `commit` renames it over the previous last.pt.
    A loss that turns NaN discards it: last.pt keeps the last good weights.
    """

    def __init__(self, path, step=None):
        self.path = path
        self.step = step  # the iteration of the last.pt in place, None before the first
        self.pending = None  # (temporary file, its iteration)

    def write(self, state, proven):
        self.pending = (write_pending(self.path, lambda f: torch.save(state, f)), state["iter_num"])
        if proven:
            self.commit()

    def commit(self):
        if self.pending:
            commit(self.pending[0], self.path)
            self.step, self.pending = self.pending[1], None

    def discard(self):
        if self.pending:
            discard(self.pending[0])
            self.pending = None


def check_writable(out_dir):
    """Fail before training starts, not at the first save, when out_dir cannot be written."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, f".write-test{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise UserError(f"out_dir {out_dir} is not writable ({e.strerror}); choose another --out_dir") from None


# --------------------------------------------------------------------------- reading

def load_checkpoint(path):
    """Read a checkpoint into CPU memory, without unpickling arbitrary objects; a bad file is a clear error.

    Always the CPU, whatever device the run uses: the random generators' states
    must be CPU tensors, and the model moves to its device once built.
    """
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}; train one first with python train.py CONFIG")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a refused object, a truncated or foreign file: one clear line each
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        refused = [line for line in lines if "GLOBAL" in line]  # weights_only names what it would have called
        if refused:
            raise UserError(f"{path} holds Python objects, not just tensors ({refused[0]}); it was not written by "
                            "this project and is not loaded, since loading it could run code") from None
        reason = next((line for line in lines if line.startswith("Unsupported")), lines[0] if lines else "")
        reason = reason.split(". ")[0][:120]  # the first sentence says what went wrong
        raise UserError(f"{path} is damaged or not a checkpoint ({type(e).__name__}: {reason}); "
                        "use another checkpoint, or train again") from None
    if not isinstance(state, dict) or not all(k in state for k in ("model", "model_config", "tokenizer")):
        raise UserError(f"{path} is not a checkpoint of this project (it lacks a model, model_config or tokenizer)")
    return state


def check_vocabulary(state, meta, dataset, path, doing):
    """A checkpoint's model reads only the token ids of the vocabulary it was trained on."""
    if state["tokenizer"] != {k: meta.get(k) for k in state["tokenizer"]}:
        raise UserError(f"dataset {dataset} has a different vocabulary from {path}; "
                        f"{doing} on the dataset it was trained on, or start a new out_dir")


def resolve_checkpoint(path, name=BEST):
    """A checkpoint file from a file path or an out_dir."""
    return os.path.join(path, name) if os.path.isdir(path) else path


def model_from(state, path, config=None):
    """The model a checkpoint's weights fill, on the CPU; a mismatch is one clear line."""
    try:
        config = config or GPTConfig(**state["model_config"])
        embedding = state["model"].get("wte.weight")
        if embedding is not None and embedding.shape[0] == config.vocab_size < config.padded_vocab_size:
            raise UserError(f"{path} was written by an earlier version of this project, whose embedding was not "
                            "padded to a multiple of 64 tokens; train the model again")
        return build_model(config, state["model"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"{path} does not hold a model this project can build "
                        f"({str(e).splitlines()[0][:160]})") from None


def load_model(source):
    """(model on the CPU in eval mode, tokenizer, checkpoint dict) from an out_dir or checkpoint file,
    or from GPT-2's weights (a name, a model.safetensors file or a folder holding one)."""
    if is_gpt2_source(source):
        tokenizer, model = GPT2Tokenizer(), load_pretrained(source)
        if model.config.vocab_size < tokenizer.vocab_size:
            raise UserError(f"{source} knows {model.config.vocab_size} tokens, fewer than GPT-2's "
                            f"{tokenizer.vocab_size}; it cannot be used with the GPT-2 tokenizer")
        return model.eval(), tokenizer, {}
    path = resolve_checkpoint(source)
    state = load_checkpoint(path)
    return model_from(state, path).eval(), load_tokenizer(state["tokenizer"]), state


# --------------------------------------------------------------------------- OpenAI's GPT-2 weights

# The four sizes OpenAI released (Radford et al. 2019), by their Hugging Face names.
GPT2_SIZES = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M parameters
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 355M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
}
HUB_URL = "https://huggingface.co/openai-community/{name}/resolve/main/{file}"
HUB_FILES = ("config.json", "model.safetensors")  # the small one first: a failure costs little
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
# Hugging Face's GPT-2 keeps these four in Conv1D layers, whose weight is (in, out): nn.Linear's transposed.
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def is_gpt2_source(source):
    """Whether source names GPT-2 weights (a name, a .safetensors file, a folder holding one)
    rather than a checkpoint of this project."""
    if os.path.isdir(source):
        return os.path.isfile(os.path.join(source, "model.safetensors"))
    return source in GPT2_SIZES or source.endswith(".safetensors")


def check_gpt2_source(source, flag="init_from"):
    """source, if it names GPT-2 weights; otherwise a one-line error that lists what does."""
    if not is_gpt2_source(source):
        raise UserError(f"{flag} takes {', '.join(GPT2_SIZES)}, or a model.safetensors file or a folder holding one, "
                        f"not {source!r}; for a checkpoint of this project use --out_dir")
    return source


def cache_dir():
    """Where downloads are kept: $XDG_CACHE_HOME/scratchgpt, else ~/.cache/scratchgpt."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "scratchgpt")


def resolve(source):
    """(model.safetensors path, config.json path or None) for a name, a file or a folder.

    A name is downloaded once, into cache_dir()/NAME.
    """
    if source in GPT2_SIZES:
        folder = os.path.join(cache_dir(), source)
        for file in HUB_FILES:
            if not os.path.isfile(os.path.join(folder, file)):
                download(HUB_URL.format(name=source, file=file), os.path.join(folder, file),
                         offline=f"copy model.safetensors and config.json of {source} into a folder and pass "
                                 "--init_from=PATH/TO/FOLDER")
        source = folder
    if os.path.isdir(source):
        weights = os.path.join(source, "model.safetensors")
        if not os.path.isfile(weights):
            raise UserError(f"{source} holds no model.safetensors; pass a folder with GPT-2's "
                            "model.safetensors and config.json, or the file itself")
    elif os.path.isfile(source):
        weights = source
    else:
        raise UserError(f"init_from {source!r} is neither scratch, resume, one of {', '.join(GPT2_SIZES)}, "
                        "nor an existing model.safetensors file or folder holding one")
    config = os.path.join(os.path.dirname(weights), "config.json")
    return weights, config if os.path.isfile(config) else None


def read_header(path):
    """{name: (torch dtype, shape, begin, end)} of a safetensors file, and the offset of its data."""
    def bad(why):
        return UserError(f"{path} is not a safetensors file of float tensors ({why}); "
                         "pass GPT-2's model.safetensors")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise bad("shorter than 8 bytes")
        (n,) = struct.unpack("<Q", head)  # the JSON header's length, 8 bytes little-endian
        if n > size - 8:
            raise bad("its header length is past the end of the file")
        try:
            header = json.loads(f.read(n))
        except ValueError:  # bad JSON or bad UTF-8
            raise bad("the header is not JSON") from None
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    header.pop("__metadata__", None)  # free-form strings, not a tensor
    tensors = {}
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = SAFETENSORS_DTYPES[info["dtype"]], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise bad(f"tensor {name} has no readable float dtype, shape and data_offsets") from None
        if not 0 <= begin <= end <= size - 8 - n or end - begin != math.prod(shape) * dtype.itemsize:
            raise bad(f"tensor {name}'s bytes do not match its shape or lie outside the file")
        tensors[name] = (dtype, shape, begin, end)
    if not tensors:
        raise bad("it holds no tensors")
    return tensors, 8 + n


def our_name(hf_name):
    """The GPT parameter a Hugging Face GPT-2 tensor fills, or None for one to skip.

    OpenAI's files name tensors h.0.attn.c_attn.weight; GPT2LMHeadModel saves the
    same with a 'transformer.' prefix.
    """
    name = hf_name.removeprefix("transformer.")
    if name == "lm_head.weight":
        return None  # GPT-2 ties the output head to wte, which fills it
    if name.split(".")[-2:] in (["attn", "bias"], ["attn", "masked_bias"]):
        return None  # the causal mask, which older transformers saved as buffers
    return "blocks." + name[2:] if name.startswith("h.") else name


def config_from_json(path, source):
    """GPTConfig from a Hugging Face GPT2Config file, refusing options this GPT does not compute."""
    try:
        with open(path, encoding="utf-8") as f:
            c = json.load(f)
        activation = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}.get(
            c.get("activation_function", "gelu_new"))
        unsupported = [
            (c.get("model_type", "gpt2") != "gpt2", f"model_type {c.get('model_type')!r}"),
            (activation is None, f"activation_function {c.get('activation_function')!r}"),
            (c.get("layer_norm_epsilon", 1e-5) != 1e-5, "a layer_norm_epsilon other than 1e-5"),
            (c.get("n_inner") not in (None, 4 * c["n_embd"]), "an MLP width other than 4 * n_embd"),
            (not c.get("tie_word_embeddings", True), "an output head not tied to the embeddings"),
            (not c.get("scale_attn_weights", True) or c.get("scale_attn_by_inverse_layer_idx", False),
             "attention scaled other than by 1/sqrt(head size)"),
        ]
        reasons = [why for bad, why in unsupported if bad]
        if reasons:
            raise UserError(f"{source} has {', '.join(reasons)}, which this project's GPT does not compute; "
                            "use one of OpenAI's GPT-2 models")
        return GPTConfig(block_size=c["n_positions"], vocab_size=c["vocab_size"], n_layer=c["n_layer"],
                         n_head=c["n_head"], n_embd=c["n_embd"], bias=True, activation=activation)
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a GPT-2 config.json ({type(e).__name__}: {e}); "
                        "use the config.json that came with the weights") from None


def config_from_shapes(tensors, path):
    """GPTConfig for a safetensors file without config.json: sizes from the tensors' shapes,
    the head count from OpenAI's four models (shapes do not show it)."""
    shapes = {our_name(name): shape for name, (_, shape, _, _) in tensors.items() if our_name(name)}
    if "wte.weight" not in shapes or "wpe.weight" not in shapes:
        raise UserError(f"{path} has no wte or wpe tensor; is it a GPT-2 model?")
    vocab_size, n_embd = shapes["wte.weight"]
    n_layer = 1 + max((int(name.split(".")[1]) for name in shapes if name.startswith("blocks.")), default=-1)
    known = [s for s in GPT2_SIZES.values() if (s["n_layer"], s["n_embd"]) == (n_layer, n_embd)]
    if not known:
        raise UserError(f"{path} is not one of OpenAI's four GPT-2 sizes, so its head count is unknown; "
                        "put its config.json beside it")
    return GPTConfig(block_size=shapes["wpe.weight"][0], vocab_size=vocab_size, n_layer=n_layer,
                     n_head=known[0]["n_head"], n_embd=n_embd, bias=True, activation="gelu_tanh")


@torch.no_grad()
def load_weights(model, path, tensors, data_start):
    """Copy every tensor of the file into the model's parameters, one tensor in memory at a time."""
    params = dict(model.named_parameters())  # the tied lm_head shares wte.weight, listed once
    filled = set()
    with open(path, "rb") as f:
        for hf_name, (dtype, shape, begin, end) in tensors.items():
            name = our_name(hf_name)
            if name is None:
                continue
            if name not in params:
                raise UserError(f"{path} has a tensor {hf_name} that GPT-2 does not; is it a GPT-2 model?")
            raw = bytearray(end - begin)
            f.seek(data_start + begin)
            f.readinto(raw)
            # Little-endian bytes, as safetensors stores them and x86 and ARM read them.
            t = torch.from_numpy(np.frombuffer(raw, dtype=np.uint8)).view(dtype).reshape(shape)
            if name.endswith(CONV1D_WEIGHTS):
                t = t.t()
            target = params[name]
            if name == "wte.weight":  # the padded rows past GPT-2's vocabulary are never read: zeros
                target[t.shape[0]:].zero_()
                target = target[:t.shape[0]]
            if t.shape != target.shape:
                raise UserError(f"{path}: {hf_name} has shape {tuple(t.shape)} but the config gives "
                                f"{tuple(target.shape)}; use the config.json that came with the weights")
            target.copy_(t)
            filled.add(name)
    missing = sorted(set(params) - filled)
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}; "
                        "is it a complete GPT-2 model?")


def load_pretrained(source, dropout=0.0):
    """A GPT holding GPT-2's weights, from a name, a model.safetensors file, or a folder with one."""
    weights, config_path = resolve(source)
    tensors, data_start = read_header(weights)
    config = config_from_json(config_path, source) if config_path else config_from_shapes(tensors, weights)
    # Built without its random init, which load_weights would overwrite (for gpt2-xl,
    # a lot of random numbers): on the meta device, then given empty storage.
    with torch.device("meta"):
        model = GPT(replace(config, dropout=dropout))
    model = model.to_empty(device="cpu")
    model.lm_head.weight = model.wte.weight  # to_empty gave the tied pair two tensors: one again
    load_weights(model, weights, tensors, data_start)  # fills every parameter, or refuses the file
    return model


def gpt2_weights(source, meta, dataset, ddp, dropout=0.0):
    """GPT-2's weights for training or scoring on a dataset, on the CPU: the data is checked before a
    download, and one process per machine downloads while the others wait, then read the cache."""
    if meta["tokenizer"] != "gpt2":
        raise UserError(f"GPT-2's weights need GPT-2 tokens, but dataset {dataset} is {meta['tokenizer']}-level; "
                        f"prepare it with python prepare.py --tokenizer gpt2")
    if ddp.local_rank == 0:
        resolve(source)
    ddp.barrier()
    return load_pretrained(source, dropout=dropout)


# --------------------------------------------------------------------------- random state

def rng_state(device):
    """Every random generator a training step on `device` draws from, in a form weights_only loads."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":  # this process's GPU only: another machine may see other GPUs
        state["cuda"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state, device):
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.cpu().numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"].cpu())  # generators take CPU byte tensors only
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
    if device.type == "mps" and "mps" in state:
        torch.mps.set_rng_state(state["mps"].cpu())


def rank_rng(state, rank, world_size):
    """The random state this rank saved, or None when the run was saved by another number of processes.

    Then the batches cannot continue as before anyway; each rank starts new streams instead.
    """
    if len(state["rng"]) != world_size:
        return None
    return state["rng"][rank]


# --------------------------------------------------------------------------- resuming

def load_resume_state(cfg, model_cfg, meta):
    """(model with the saved weights, on the CPU; the rest of last.pt) for --init_from=resume.

    Settings that shape the weights must be the saved run's; the others (max_iters,
    learning rate, eval cadence, dropout, ...) may change.
    """
    path = os.path.join(cfg.out_dir, LAST)
    state = load_checkpoint(path)
    missing = [k for k in TRAINING_KEYS if k not in state]
    if missing:
        raise UserError(f"{path} holds no training state to resume from (no {', '.join(missing)}); "
                        "start again with --init_from=scratch, or resume from a last.pt that train.py wrote")
    try:
        saved = GPTConfig(**state["model_config"])
    except (TypeError, ValueError) as e:
        raise UserError(f"{path} has a model config this version cannot build ({e})") from None
    changed = [k for k in asdict(saved) if k not in RESUMABLE_MODEL_KEYS + ("vocab_size",)
               and getattr(saved, k) != getattr(model_cfg, k)]
    if changed:
        diffs = ", ".join(f"{k} {getattr(saved, k)!r} -> {getattr(model_cfg, k)!r}" for k in changed)
        raise UserError(f"cannot resume with a different model shape ({diffs}); "
                        "use the settings of the saved run, or a new out_dir")
    check_vocabulary(state, meta, cfg.dataset, path, "resume")
    if cfg.max_iters < state["iter_num"]:
        raise UserError(f"max_iters {cfg.max_iters} is below iteration {state['iter_num']} of {path}; "
                        "resume with a larger --max_iters")
    config = replace(saved, **{k: getattr(model_cfg, k) for k in RESUMABLE_MODEL_KEYS})
    model = model_from(state, path, config)
    del state["model"]  # the model holds the weights now, not two copies
    return model, state


def report_changes(cfg, model_cfg, state):
    """Print the settings that differ from the saved run's, which resuming allows."""
    saved = {**state["train_config"], **state["model_config"]}
    now = {**asdict(cfg), **asdict(model_cfg)}
    changes = [f"{k} {saved[k]!r} -> {v!r}" for k, v in now.items()
               if k in saved and k != "init_from" and saved[k] != v]
    if changes:
        print("resuming with changed settings: " + ", ".join(changes))


def restore_optimizer(state, optimizer, scaler, path, optimizer_name):
    """Load the saved optimizer (and gradient scaler) state into this run's optimizer."""
    saved_name = state["train_config"]["optimizer"]
    if saved_name != optimizer_name:
        raise UserError(f"{path} was trained with optimizer={saved_name!r}, and its state cannot serve "
                        f"{optimizer_name!r}; resume with --optimizer={saved_name}")
    # Saved groups carry settings of the run that saved them; these stay this run's: the
    # kernel (fused AdamW takes GradScaler's scale inside its step, and a group flagged
    # unfused would make scaler.step fail), and each group's share of the learning rate.
    kept = [{k: group[k] for k in ("fused", "foreach", "lr_scale") if k in group} for group in optimizer.param_groups]
    try:
        optimizer.load_state_dict(state["optimizer"])
        for group, settings in zip(optimizer.param_groups, kept):
            group.update(settings)
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    except (ValueError, KeyError, RuntimeError) as e:
        raise UserError(f"the optimizer state in {path} does not fit the model ({e}); "
                        "it is damaged or was not written by train.py") from None
