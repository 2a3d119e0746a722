"""nanoGPT's "cheap computer" CPU recipe, kept fixed as a reference point.

    python train.py config/reference_cpu.py

The reference implementation reaches val loss 1.8857 at iter 2000 on a 2-core CPU.
"""
out_dir = "out-reference-cpu"
dataset = "shakespeare_char"
eval_interval = 250
eval_iters = 20
log_interval = 100
checkpoint_interval = 250

batch_size = 12
block_size = 64

n_layer = 4
n_head = 4
n_embd = 128
bias = False  # no biases in Linear and LayerNorm: a little faster, as good or better
dropout = 0.0

learning_rate = 1e-3
max_iters = 2000
lr_decay_iters = max_iters
min_lr = learning_rate / 10
beta2 = 0.99
warmup_iters = 100
