"""OpenAI's GPT-2 weights in this project's GPT, with no dependency beyond torch and numpy.

    python train.py config/finetune_shakespeare.py              # init_from = "gpt2"
    python sample.py --init_from gpt2 --start "Hello, I'm a language model,"
    python sample.py --init_from path/to/model.safetensors       # a local copy, offline

`load_pretrained(source)` takes a name (gpt2, gpt2-medium, gpt2-large, gpt2-xl),
downloaded once from the Hugging Face hub into a cache folder, or a local
model.safetensors file, or a folder holding model.safetensors and config.json.
The safetensors format is simple enough to read here: an 8-byte little-endian
header length, a JSON header of name -> dtype, shape and data_offsets, then the
raw bytes of the tensors.
"""
import json
import math
import os
import struct
import sys
import tempfile
import urllib.request
from dataclasses import replace

import numpy as np
import torch

from common import UserError
from model import GPT, GPTConfig
from prepare import Progress

# The four sizes OpenAI released (Radford et al. 2019), by their Hugging Face names.
GPT2_SIZES = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M parameters
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 355M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
}
HUB_URL = "https://huggingface.co/openai-community/{name}/resolve/main/{file}"
HUB_FILES = ("config.json", "model.safetensors")  # the small one first: a failure costs little
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
# Hugging Face's GPT-2 keeps these four in Conv1D layers, whose weight is (in, out): nn.Linear's transposed.
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def is_gpt2_source(source):
    """Whether source names GPT-2 weights (a name, a .safetensors file, a folder holding one)
    rather than a checkpoint of this project."""
    if os.path.isdir(source):
        return os.path.isfile(os.path.join(source, "model.safetensors"))
    return source in GPT2_SIZES or source.endswith(".safetensors")


def cache_dir():
    """Where downloaded weights are kept: $XDG_CACHE_HOME/scratchgpt, else ~/.cache/scratchgpt."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "scratchgpt")


def download(name):
    """The cached folder of config.json and model.safetensors for a GPT-2 name, fetched if missing.

    Each file arrives in a temporary file of a unique name, renamed when complete,
    so an interrupted download is never mistaken for a whole one, and processes
    downloading into a cache they share (machines on one filesystem) never write
    into each other's file.
    """
    folder = os.path.join(cache_dir(), name)
    for file in HUB_FILES:
        path = os.path.join(folder, file)
        if os.path.isfile(path):
            continue
        url = HUB_URL.format(name=name, file=file)
        print(f"downloading {url} to {folder}", file=sys.stderr)
        tmp, progress = None, None
        try:
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f"{file}.", suffix=".part", dir=folder)
            with urllib.request.urlopen(url, timeout=60) as response, os.fdopen(fd, "wb") as f:
                progress = Progress(int(response.headers.get("Content-Length") or 0), file)
                while block := response.read(1 << 20):
                    f.write(block)
                    progress.advance(len(block))
            os.replace(tmp, path)
        except OSError as e:  # URLError, HTTPError, timeouts, a full disk
            if tmp and os.path.exists(tmp):
                os.remove(tmp)
            raise UserError(f"could not download {url} ({getattr(e, 'reason', None) or e}); offline, copy "
                            f"model.safetensors and config.json of {name} into a folder and pass "
                            f"--init_from=PATH/TO/FOLDER") from None
        finally:
            if progress is not None:
                progress.close()  # ends the progress line, so an error starts on a line of its own
    return folder


def resolve(source):
    """(model.safetensors path, config.json path or None) for a name, a file or a folder."""
    if source in GPT2_SIZES:
        source = download(source)
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
            dtype, shape, (begin, end) = DTYPES[info["dtype"]], tuple(info["shape"]), info["data_offsets"]
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
