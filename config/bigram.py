"""The bigram baseline: each character predicts the next from a 65 x 65 lookup table.

    python train.py config/bigram.py && python sample.py --out_dir out-bigram --start "ROMEO:"

It sees one character of context, so its loss is the floor every later model
must beat (the lecture's bigram reaches val loss about 2.5).
"""
arch = "bigram"
out_dir = "out-bigram"
dataset = "shakespeare_char"
eval_interval = 500
eval_iters = 200
log_interval = 100
checkpoint_interval = 500

batch_size = 32
block_size = 8  # only the batch shape: the model reads one token at a time

learning_rate = 1e-2
max_iters = 3000
lr_decay_iters = max_iters
min_lr = 1e-3
warmup_iters = 0
weight_decay = 0.0  # decay would pull the table toward uniform logits
