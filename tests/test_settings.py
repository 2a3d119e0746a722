import pytest

from common import UserError
from settings import help_text, load_settings, read_config_file


def test_config_file_then_overrides(tmp_path):
    path = tmp_path / "c.py"
    path.write_text('"""doc"""\nn_layer = 3\nmax_iters = 200\nlr_decay_iters = max_iters\nmin_lr = 1e-3 / 10\n')
    cfg, model = load_settings([str(path), "--max_iters=50", "--n_embd", "72", "--compile=true"])
    assert model.n_layer == 3 and model.n_embd == 72
    assert cfg.max_iters == 50 and cfg.lr_decay_iters == 200 and cfg.compile == "true"
    assert cfg.min_lr == pytest.approx(1e-4)


def test_values_are_parsed_with_their_type():
    cfg, model = load_settings(["--learning_rate=3e-4", "--max_iters=2e3", "--bias=false", "--dropout=0"])
    assert cfg.learning_rate == 3e-4 and cfg.max_iters == 2000
    assert model.bias is False and isinstance(model.dropout, float)


@pytest.mark.parametrize("args, message", [
    (["--n_layers=4"], "did you mean 'n_layer'"),
    (["--n_layer=four"], "takes an integer"),
    (["--n_layer=1.5"], "takes an integer"),
    (["--compile=maybe"], "compile must be auto, true or false"),
    (["--bias=maybe"], "takes true or false"),
    (["--max_iters"], "needs a value"),
    (["--pos_encoding=absolute"], "pos_encoding must be one of"),
    (["a.py", "b.py"], "unexpected argument"),
    (["--vocab_size=10"], "unknown setting"),
    (["--eval_interval=0"], "eval_interval must be at least 1"),
    (["--gradient_accumulation_steps=0"], "gradient_accumulation_steps must be at least 1"),
])
def test_bad_settings_are_clear_errors(args, message, tmp_path):
    for name in ("a.py", "b.py"):
        (tmp_path / name).write_text("")
    args = [str(tmp_path / a) if a.endswith(".py") else a for a in args]
    with pytest.raises(UserError, match=message):
        load_settings(args)


@pytest.mark.parametrize("text, message", [
    ("n_layer = = 2\n", "not valid Python"),
    ("import os\n", "may only assign settings"),
    ("n_layer = open('x')\n", "only literals"),
    ("batch_size = 'big'\n", "takes an integer"),
])
def test_broken_config_file(tmp_path, text, message):
    path = tmp_path / "bad.py"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_settings([str(path)])


def test_missing_config_file():
    with pytest.raises(UserError, match="not found"):
        read_config_file("no/such/file.py")


def test_config_files_in_repo_parse():
    import glob
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = glob.glob(os.path.join(root, "config", "*.py"))
    assert files
    for path in files:
        load_settings([path])


def test_help_lists_every_setting():
    text = help_text()
    for key in ("--n_layer", "--learning_rate", "--init_from", "--pos_encoding", "--checkpoint_interval"):
        assert key in text


def test_the_fine_tuning_recipe_has_gpt2s_shape():
    from checkpoint import GPT2_SIZES
    from conftest import ROOT
    cfg, model = load_settings([f"{ROOT}/config/finetune_shakespeare.py"])
    assert cfg.init_from == "gpt2" and cfg.dataset == "shakespeare" and not cfg.decay_lr
    # the shape must be gpt2's, or --init_from=resume would refuse the run it saved
    assert dict(n_layer=model.n_layer, n_head=model.n_head, n_embd=model.n_embd) == GPT2_SIZES["gpt2"]
    assert model.activation == "gelu_tanh" and model.bias and model.block_size <= 1024
