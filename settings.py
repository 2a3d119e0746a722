"""Training settings: typed defaults, config files, and `--key=value` overrides.

A config file is plain Python made of assignments (`n_layer = 6`); each value is
a literal or arithmetic on literals and earlier names. The file is parsed, never
executed. Command-line overrides are parsed with each setting's type, and an
unknown key is refused with the closest valid name.
"""
import ast
import difflib
import inspect
import io
import operator
import os
import tokenize
from dataclasses import dataclass, fields

from common import UserError, can_compile
from model import GPTConfig


@dataclass
class TrainConfig:
    """Everything about a training run that is not the model's shape."""
    # data and output
    dataset: str = "shakespeare_char"  # folder under data_root written by prepare.py
    data_root: str = "data"  # where dataset folders live
    out_dir: str = "out-shakespeare-char"  # where ckpt.pt, last.pt, metrics.jsonl and loss.png go
    init_from: str = "scratch"  # scratch | resume | gpt2 | gpt2-medium | gpt2-large | gpt2-xl | PATH
    # evaluation, logging and checkpoints
    eval_interval: int = 250  # steps between estimates of train and val loss (ckpt.pt is saved when val improves)
    eval_iters: int = 200  # batches per split in each estimate
    eval_only: bool = False  # score the checkpoint on every target of the val split and exit
    log_interval: int = 10  # steps between lines of loss and speed
    checkpoint_interval: int = 250  # how often the resume checkpoint (last.pt) is written
    wandb_log: bool = False  # send the metrics to Weights & Biases too
    wandb_project: str = "gpt"  # its project
    wandb_run_name: str = "run"  # its run name
    # batches
    batch_size: int = 12  # windows of block_size tokens per micro-batch
    gradient_accumulation_steps: int = 1  # micro-batches per step, for the whole job: split across processes under torchrun
    # the optimizer and the learning-rate schedule
    optimizer: str = "adamw"  # adamw | muon: Muon for the blocks' matrices, AdamW for the rest (optim.py)
    learning_rate: float = 6e-4  # AdamW's peak rate
    muon_learning_rate: float = 0.02  # Muon's peak rate; the schedule scales it as it scales learning_rate
    max_iters: int = 5000  # optimizer steps in all
    weight_decay: float = 0.1  # AdamW's decay of the weight matrices (never biases or gains)
    beta1: float = 0.9  # AdamW's momentum
    beta2: float = 0.95  # AdamW's average of squared gradients
    grad_clip: float = 1.0  # largest gradient norm; 0 disables clipping
    decay_lr: bool = True  # warm up, then cosine decay; false keeps learning_rate constant
    warmup_iters: int = 100  # steps of linear warmup
    lr_decay_iters: int = 5000  # cosine decay ends here, then the rate stays at min_lr
    min_lr: float = 6e-5  # the rate at the end of the decay
    # hardware
    device: str = "auto"  # auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bf16 where native, fp16 on older GPUs, else fp32) | float32 | bfloat16 | float16
    compile: str = "auto"  # auto (on for CUDA GPUs) | true | false: torch.compile the model
    deterministic: bool = False  # deterministic kernels: resumed CUDA runs repeat to the last bit, slower
    seed: int = 1337  # seed of the weights, batches and dropout

    def __post_init__(self):
        for key in ("eval_interval", "eval_iters", "log_interval", "checkpoint_interval", "batch_size",
                    "gradient_accumulation_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1, not {getattr(self, key)}")
        if self.max_iters < 0:
            raise ValueError(f"max_iters must be at least 0, not {self.max_iters}")
        if self.optimizer not in ("adamw", "muon"):
            raise ValueError(f"optimizer must be 'adamw' or 'muon', not {self.optimizer!r}")
        self.compile = str(self.compile).lower()  # a config file may say compile = True
        self.compile = {"1": "true", "yes": "true", "0": "false", "no": "false"}.get(self.compile, self.compile)
        if self.compile not in ("auto", "true", "false"):
            raise ValueError(f"compile must be auto, true or false, not {self.compile!r}")

    def compiles(self, device):
        """Whether to torch.compile on this device: by default on CUDA GPUs that its compiler
        (Triton) supports, where fusing kernels pays for the compilation in minutes; on CPUs,
        Macs and older GPUs only when asked."""
        return self.compile == "true" or (self.compile == "auto" and can_compile(device))


# Model settings live in GPTConfig alone; vocab_size comes from the dataset.
MODEL_KEYS = [f.name for f in fields(GPTConfig) if f.name != "vocab_size"]
TRAIN_KEYS = [f.name for f in fields(TrainConfig)]
FIELD_TYPES = {f.name: f.type for f in fields(GPTConfig) + fields(TrainConfig)}

_BIN_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
            ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow, ast.Mod: operator.mod}


def _evaluate(node, names, where):
    """Value of a config expression: literals, earlier names, + - * / // ** %."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.Name) and node.id in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _evaluate(node.operand, names, where)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN_OPS:
        return _BIN_OPS[type(node.op)](_evaluate(node.left, names, where), _evaluate(node.right, names, where))
    raise UserError(f"{where}: only literals, earlier settings and arithmetic are allowed in a config file")


def read_config_file(path):
    """The {name: value} assignments of a config file, in order."""
    if not os.path.isfile(path):
        raise UserError(f"config file {path} not found; see the config/ folder for examples")
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
    except SyntaxError as e:
        raise UserError(f"{path}:{e.lineno}: not valid Python ({e.msg})") from None
    values = {}
    for stmt in tree.body:
        where = f"{path}:{stmt.lineno}"
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue  # a docstring or bare string
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)):
            raise UserError(f"{where}: a config file may only assign settings, as in 'n_layer = 6'")
        values[stmt.targets[0].id] = _evaluate(stmt.value, values, where)
    return values


def _closest(key):
    match = difflib.get_close_matches(key, MODEL_KEYS + TRAIN_KEYS, n=1)
    hint = f"; did you mean '{match[0]}'?" if match else ""
    return f"unknown setting '{key}'{hint} (python train.py --help lists them all)"


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _from_text(text, want):
    """Parse command-line text as `want`; None when it does not parse."""
    if want is bool:
        return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(text.lower())
    try:
        return want(text)
    except ValueError:
        pass
    if want is int:  # allow 2e3 and 5000.0, but not 1.5
        try:
            number = float(text)
        except ValueError:
            return None
        return int(number) if number.is_integer() else None
    return None


def convert(key, value):
    """value (from a file or the command line) as the type of setting `key`."""
    want, given = FIELD_TYPES[key], value
    if want is str and isinstance(value, bool):  # compile = True in a config file
        value = str(value).lower()
    elif isinstance(value, str) and want is not str:
        value = _from_text(value.strip(), want) if value.strip() else None
    elif want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif want is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, want) or (want is not bool and isinstance(value, bool)):
        raise UserError(f"setting '{key}' takes {_TYPE_NAMES[want]}, not {given!r}")
    return value


def parse_overrides(args):
    """['--a=1', '--b', '2', 'config/x.py'] -> (config file or None, {'a': '1', 'b': '2'})."""
    config_file, overrides = None, {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            if not eq:
                if i + 1 >= len(args) or args[i + 1].startswith("--"):
                    raise UserError(f"setting '--{key}' needs a value: --{key}=VALUE")
                value = args[i + 1]
                i += 1
            overrides[key] = value
        elif config_file is None:
            config_file = arg
        else:
            raise UserError(f"unexpected argument {arg!r}: give one config file, then --key=value settings")
        i += 1
    return config_file, overrides


def load_settings(args):
    """Command-line arguments -> (TrainConfig, GPTConfig without a vocab_size yet)."""
    config_file, overrides = parse_overrides(args)
    values = read_config_file(config_file) if config_file else {}
    values.update(overrides)
    train_values, model_values = {}, {}
    for key, value in values.items():
        if key not in FIELD_TYPES or key == "vocab_size":
            raise UserError(_closest(key))
        (model_values if key in MODEL_KEYS else train_values)[key] = convert(key, value)
    try:
        return TrainConfig(**train_values), GPTConfig(**model_values)
    except ValueError as e:
        raise UserError(str(e)) from None


def descriptions(cls):
    """{setting: the comment beside it in cls's source}: each setting is described once, where it is defined."""
    out, name = {}, None
    for tok in tokenize.generate_tokens(io.StringIO(inspect.getsource(cls)).readline):
        if tok.type == tokenize.NAME and name is None and tok.start[1] == 4:  # a field, at the class's indent
            name = tok.string
        elif tok.type == tokenize.COMMENT and name is not None and tok.start[1] > 4:
            out[name] = tok.string.lstrip("#").strip()
        elif tok.type in (tokenize.NEWLINE, tokenize.NL):
            name = None
    return out


def help_text():
    lines = ["usage: python train.py [CONFIG_FILE] [--key=value ...]", "",
             "A config file assigns settings (see config/); --key=value and --key value override them.", ""]
    for title, cls, keys in (("model (GPTConfig)", GPTConfig, MODEL_KEYS), ("training (TrainConfig)", TrainConfig, TRAIN_KEYS)):
        lines.append(f"{title}:")
        defaults, about = cls(), descriptions(cls)
        for key in keys:
            lines.append(f"  --{key:<28} {FIELD_TYPES[key].__name__:<6} default {getattr(defaults, key)!r:<22} "
                         f"{about.get(key, '')}".rstrip())
        lines.append("")
    return "\n".join(lines)
