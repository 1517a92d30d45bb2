"""The PyTorch/peft peer of `benches/train.rs`: the same LoRA training step as diffusers'
`train_text_to_image_lora.py` (UNet with LoRA on the attention projections, noise-prediction
MSE, backward, AdamW) on the same model, inputs and thread count; prints JSON.

    python train_peer.py MODEL_DIR STEPS THREADS BATCH SIZE [--make-small OUT_DIR]

With --make-small it first writes a random-weight UNet (SD1.5's layout, narrower) with the
tiny fixture's other parts to OUT_DIR, and trains that.
"""

import json
import os
import shutil
import sys
import time

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from peft import LoraConfig


def make_small(fixture, out):
    if os.path.isdir(out):
        return out
    shutil.copytree(fixture, out)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(64, 128, 256, 256),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=64, attention_head_dim=8, norm_num_groups=32,
    )
    shutil.rmtree(os.path.join(out, "unet"))
    unet.save_pretrained(os.path.join(out, "unet"))
    return out


def main():
    model, steps, threads, batch, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    if "--make-small" in sys.argv:
        model = make_small(model, sys.argv[sys.argv.index("--make-small") + 1])
    torch.set_num_threads(threads)
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet").float()
    scheduler = DDPMScheduler.from_pretrained(model, subfolder="scheduler")
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn((batch, 4, size, size), generator=generator)
    context = torch.randn((batch, 77, unet.config.cross_attention_dim), generator=generator)

    def step():
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        prediction = unet(noisy, timesteps, context, return_dict=False)[0]
        loss = F.mse_loss(prediction.float(), noise.float(), reduction="mean")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - started
    print(json.dumps({"model": model, "steps_per_second": steps / seconds, "threads": threads}))


if __name__ == "__main__":
    main()
