"""GPT-2 (124M) trained from scratch on 10B tokens of FineWeb-Edu, on one or more 8-GPU machines.

    python prepare.py --hf_dataset HuggingFaceFW/fineweb-edu --hf_config sample-10BT --name fineweb_edu10B
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py
    python eval.py hellaswag --out_dir out-gpt2

GPT-2 small's shape (Radford et al. 2019) with GPT-3 small's schedule (Brown et al.
2020, table 2.1): about 0.5M tokens a step, a short warmup, cosine decay to a
tenth. 19,073 steps of 524,288 tokens make 10B tokens. A token costs 855M FLOPs
(6 per parameter plus attention, common.flops_per_token), a step 4.5e14: at 40%
MFU on 8 H100s (989 TFLOP/s each in bf16) 0.14 s a step, 45 minutes in all.
"""
out_dir = "out-gpt2"
dataset = "fineweb_edu10B"
eval_interval = 250
eval_iters = 24  # shared among the processes: 3 batches each on 8 GPUs
log_interval = 10
checkpoint_interval = 1000

n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
bias = True
activation = "gelu_tanh"  # GPT-2's: its checkpoints then score like OpenAI's weights
dropout = 0.0

# 16 x 1,024 tokens a micro-batch; 32 micro-batches a step for the whole job (4 a GPU on 8,
# 2 on 16, 1 on 32). More GPUs: halve batch_size and double this.
batch_size = 16
gradient_accumulation_steps = 32

learning_rate = 6e-4
min_lr = 6e-5
warmup_iters = 715  # 375M tokens, GPT-3's warmup
max_iters = 19073
lr_decay_iters = max_iters
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
