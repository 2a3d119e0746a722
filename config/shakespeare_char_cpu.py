"""A character model of Tiny Shakespeare for a 2-core laptop CPU: 3 to 6 minutes.

    python prepare.py && python train.py config/shakespeare_char_cpu.py

Tuned for the lowest val loss in about 300 s of training on two cores
(docs/results.md has the runs behind each choice). So short a run sees about
5.5M characters, and a small model that sees more of them beats a larger one
that sees fewer.
"""
out_dir = "out-shakespeare-char"
dataset = "shakespeare_char"
eval_interval = 500  # each evaluation costs about two seconds: few, so the steps get the time
eval_iters = 20
log_interval = 100
checkpoint_interval = 500

batch_size = 16
block_size = 128  # 128 characters of context; 16 x 128 = 2,048 tokens a step

n_layer = 4
n_head = 2  # heads of 64: fewer, larger attention matmuls run faster on a CPU
n_embd = 128
pos_encoding = "rope"  # rotary positions: val 0.02 lower at the same step, for 9% more time a step
bias = False  # no biases in Linear and LayerNorm: a little faster, as good or better
dropout = 0.0  # val loss still falls at the last step: nothing to regularise yet

# Muon for the blocks' matrices: a step costs about a third more than AdamW's, and
# does more (docs/results.md: val 1.50 against 1.55 in the same time).
optimizer = "muon"
muon_learning_rate = 0.02  # 0.015 and 0.03 did no better
learning_rate = 2e-3  # AdamW's rate, for the embeddings and gains; 3e-3 did no better
max_iters = 2700  # 3,000 did no better
lr_decay_iters = max_iters
min_lr = learning_rate / 100  # decaying nearly to zero beat decaying to a tenth

beta2 = 0.99
warmup_iters = 100
