"""A character model of Tiny Shakespeare for a 2-core laptop CPU: about 5 minutes.

    python prepare.py && python train.py config/shakespeare_char_cpu.py

Tuned for the lowest val loss in 300 s of training on two cores (README,
"Results", has the runs behind each choice). So short a run sees about 5.5M
characters, and a small model that sees more of them beats a larger one that
sees fewer: in about 250 s, 4 layers 192 wide reached val 1.62 and 256 wide 1.70
(context 128), where 128 wide reached 1.56 (context 64), all with AdamW.
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

# Muon for the blocks' matrices: whole-split val 1.5021 after 2,700 steps (269 s), where
# AdamW alone reached 1.5523 after 3,500 (293 s), both decaying to a tenth. A Muon step
# costs about 20% more.
optimizer = "muon"
muon_learning_rate = 0.02  # 0.015 and 0.03 did no better
learning_rate = 2e-3  # AdamW's rate, for the embeddings and gains; 3e-3 did no better
max_iters = 2700  # 3,000 ran past 300 s (313 s) and did no better
lr_decay_iters = max_iters
# Decay nearly to zero: whole-split 1.4885 against 1.5021 when decaying to a tenth.
min_lr = learning_rate / 100
beta2 = 0.99
warmup_iters = 100
