"""The GPU recipe: a 10.7M-parameter character model of Tiny Shakespeare.

    python prepare.py && python train.py config/shakespeare_char.py

About 3 minutes on one A100 in the reference implementation, val loss about 1.47.
"""
out_dir = "out-shakespeare-char"
dataset = "shakespeare_char"
eval_interval = 250  # the model overfits this small set quickly: watch val loss
eval_iters = 200
log_interval = 10
checkpoint_interval = 250

batch_size = 64
block_size = 256  # 256 characters of context

n_layer = 6
n_head = 6
n_embd = 384
bias = False  # no biases in Linear and LayerNorm: a little faster, as good or better
dropout = 0.2

learning_rate = 1e-3  # a small model tolerates a higher rate
max_iters = 5000
lr_decay_iters = max_iters
min_lr = learning_rate / 10
beta2 = 0.99  # more tokens per step would allow 0.95; few tokens need the smoother estimate
warmup_iters = 100
