#!/usr/bin/env python3
"""The diffusers side of `cargo bench -p pixelgen-build --bench diffusion`.

The Rust bench runs this script as a subprocess, in three separate commands so that each
one's peak memory is its own:

    diffusers_peer.py check                 versions of torch, diffusers, transformers (JSON)
    diffusers_peer.py prepare DIR           makes DIR/model (SD1.5 architecture, random
                                            weights) and DIR/inputs.safetensors, once
    diffusers_peer.py bench DIR --out JSON  times a UNet step and a whole image on the CPU
    diffusers_peer.py prepare-modes DIR     makes DIR/modes: the init image, mask, control
                                            image and an SD1.5-size ControlNet, once
    diffusers_peer.py modes DIR --out JSON  times img2img, inpainting, ControlNet and tiling

`prepare` is seeded and cached: it does nothing when DIR/model is complete, so both sides
always see the same weights. Everything runs offline: the configs below are SD1.5's
(runwayml/stable-diffusion-v1-5) and openai/clip-vit-large-patch14's, written out here.
"""

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

# No network: the model is built from the configs below. Set before importing HF libraries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Bump when the model or the inputs change, so that a stale cache is rebuilt.
MODEL_VERSION = 1
SEED = 1234

UNET_CONFIG = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

VAE_CONFIG = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

# openai/clip-vit-large-patch14's text tower, as SD1.5's text_encoder/config.json has it.
TEXT_ENCODER_CONFIG = {
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "vocab_size": 49408,
}

SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "feature_extractor": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

# A tiny CLIP BPE vocabulary (ids < 914, inside CLIP-L's 49408 embeddings) that transformers
# and pixelgen both read: the SD1 test fixture's.
FIXTURE_TOKENIZER = Path(__file__).resolve().parent.parent.parent / "pixelgen-diffusion/tests/fixtures/diffusion/sd1/model/tokenizer"

# What both sides compute.
PROMPT = "pixel art knight"
STEPS = 4
GUIDANCE = 7.5
SIZE = 512
TIMESTEP = 500

# The conditioned modes (`modes`); diffusion.rs's `modes` module has the same constants.
MODES_VERSION = 1
IMG2IMG_STRENGTH = 0.5
CONTROL_SCALE = 1.0


def emit(obj):
    print(json.dumps(obj), flush=True)


def peak_rss_bytes():
    """This process's peak resident memory. Not getrusage's ru_maxrss: on Linux a process
    started with vfork + exec (as Rust's Command starts this script) inherits its parent's
    peak there, so it would report the Rust bench's memory. VmHWM belongs to the address
    space that exec made."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def check():
    import diffusers
    import safetensors
    import torch
    import transformers

    emit({
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
    })


# ---------------------------------------------------------------------------------------
# prepare: the model folder and the inputs.
# ---------------------------------------------------------------------------------------
def generator(*names):
    """A generator per tensor, seeded from its name: adding or reordering parameters never
    changes the values of the others."""
    import torch

    digest = hashlib.sha256("/".join([str(SEED), *map(str, names)]).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def randomize_(module, tag):
    """Re-initialises every parameter. diffusers' own init zeroes the UNet's conv_out and
    the attention blocks' proj_out, which would make the UNet's output a constant and the
    parity check meaningless; here every layer is random. Weights get std 1/sqrt(fan_in)
    so activations stay O(1) through the network, norm weights ~1, biases small, token and
    position embeddings larger so that the prompt matters. Values are rounded to fp16, the
    files' precision, so both sides compute with exactly the stored weights."""
    import torch

    with torch.no_grad():
        for name, p in module.named_parameters():
            g = generator(tag, name)
            if "embedding" in name and p.ndim == 2 and ("token" in name or "position" in name):
                v = torch.randn(p.shape, generator=g) * 0.5
            elif p.ndim == 1 and "norm" in name and name.endswith("weight"):
                v = 1.0 + torch.randn(p.shape, generator=g) * 0.1
            elif p.ndim == 1:
                v = torch.randn(p.shape, generator=g) * 0.05
            else:
                v = torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5
            p.copy_(v.half().float())


def write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_half(module, path, prefix=""):
    from safetensors.torch import save_file

    state = {prefix + k: v.detach().half().contiguous() for k, v in module.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"format": "pt"})


def prepare(root):
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    stamp_path = root / "model" / "bench-stamp.json"
    stamp = {"version": MODEL_VERSION, "seed": SEED}
    if stamp_path.is_file() and json.loads(stamp_path.read_text()) == stamp and (root / "inputs.safetensors").is_file():
        emit({"prepared": False, "reason": "cached"})
        return

    start = time.perf_counter()
    # The inputs both sides use: the image's initial latents (unit variance, as pipelines
    # take them) and one UNet step's batch (CFG doubles it) and text context.
    latent = SIZE // 8
    save_file({
        "latents": torch.randn((1, 4, latent, latent), generator=generator("latents")),
        "sample": torch.randn((2, 4, latent, latent), generator=generator("sample")),
        "context": torch.randn((2, 77, 768), generator=generator("context")),
    }, str(root / "inputs.safetensors"))
    # Build in a temporary folder and rename at the end, so that an interrupted run leaves
    # no half-written model that looks complete.
    building = root / "model.partial"
    shutil.rmtree(building, ignore_errors=True)
    shutil.rmtree(root / "model", ignore_errors=True)

    unet = UNet2DConditionModel.from_config(UNET_CONFIG)
    randomize_(unet, "unet")
    save_half(unet, building / "unet" / "diffusion_pytorch_model.safetensors")
    write_json(building / "unet" / "config.json", UNET_CONFIG)
    del unet

    vae = AutoencoderKL.from_config(VAE_CONFIG)
    randomize_(vae, "vae")
    save_half(vae, building / "vae" / "diffusion_pytorch_model.safetensors")
    write_json(building / "vae" / "config.json", VAE_CONFIG)
    del vae

    text_encoder = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in TEXT_ENCODER_CONFIG.items() if k != "architectures"}))
    randomize_(text_encoder, "text_encoder")
    # Real checkpoints name the tensors `text_model.…`; transformers >= 5.6 dropped that
    # level from CLIPTextModel's state dict but still loads either form.
    keys_have_level = next(iter(text_encoder.state_dict())).startswith("text_model.")
    save_half(text_encoder, building / "text_encoder" / "model.safetensors",
              prefix="" if keys_have_level else "text_model.")
    write_json(building / "text_encoder" / "config.json", TEXT_ENCODER_CONFIG)
    del text_encoder

    shutil.copytree(FIXTURE_TOKENIZER, building / "tokenizer")
    write_json(building / "scheduler" / "scheduler_config.json", SCHEDULER_CONFIG)
    write_json(building / "model_index.json", MODEL_INDEX)
    write_json(building / "bench-stamp.json", stamp)
    building.rename(root / "model")

    emit({"prepared": True, "seconds": time.perf_counter() - start})


# ---------------------------------------------------------------------------------------
# bench: the measurements.
# ---------------------------------------------------------------------------------------
def bench(root, out, threads, runs, image_runs):
    import torch

    torch.set_num_threads(threads)
    import diffusers
    import transformers
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from safetensors.torch import load_file, save_file

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    model = root / "model"
    inputs = load_file(str(root / "inputs.safetensors"))
    result = {"threads": torch.get_num_threads(), "torch": torch.__version__, "diffusers": diffusers.__version__}

    # One UNet step, as the denoising loop calls it.
    start = time.perf_counter()
    unet = UNet2DConditionModel.from_pretrained(model / "unet", dtype=torch.float32)
    unet.eval()
    unet_load = time.perf_counter() - start
    result["attention_processor"] = type(next(iter(unet.attn_processors.values()))).__name__
    step_samples = []
    with torch.inference_mode():
        for i in range(runs + 1):  # the first is the warm-up
            start = time.perf_counter()
            output = unet(inputs["sample"], TIMESTEP, encoder_hidden_states=inputs["context"]).sample
            if i > 0:
                step_samples.append(time.perf_counter() - start)
    save_file({"output": output.contiguous()}, str(out.parent / "diffusers_unet_output.safetensors"))
    result["step_seconds"] = step_samples
    result["step_median"] = statistics.median(step_samples)

    # The whole image. The pipeline shares the UNet already loaded (one copy in memory, as
    # pixelgen has); its load time is the other components'.
    start = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(model, unet=unet, dtype=torch.float32, safety_checker=None)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    result["load_seconds"] = unet_load + time.perf_counter() - start
    image_samples = []
    for _ in range(image_runs):
        start = time.perf_counter()
        with torch.inference_mode():
            image = pipe(
                PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                latents=inputs["latents"].clone(), output_type="pil",
            ).images[0]
        image_samples.append(time.perf_counter() - start)
    image.save(out.parent / "diffusers.png")
    result["image_seconds"] = image_samples
    result["image_best"] = min(image_samples)
    result["peak_rss_bytes"] = peak_rss_bytes()
    write_json(out, result)
    emit(result)


# ---------------------------------------------------------------------------------------
# prepare-modes and modes: the conditioned drawing, each mode on the same model.
# ---------------------------------------------------------------------------------------
def prepare_modes(root):
    """DIR/modes: init.png (a scene of flat shapes), mask.png (white repaints a rectangle),
    control.png (a stick figure) and controlnet/ (ControlNetModel.from_unet of DIR/model's
    UNet, every weight re-randomised, the zero convolutions included, so the ControlNet's
    residuals are as large as a trained one's)."""
    import numpy as np
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel
    from PIL import Image, ImageDraw

    folder = root / "modes"
    stamp_path = folder / "stamp.json"
    stamp = {"version": MODES_VERSION, "model": MODEL_VERSION, "seed": SEED}
    if stamp_path.is_file() and json.loads(stamp_path.read_text()) == stamp:
        emit({"prepared": False, "reason": "cached"})
        return
    start = time.perf_counter()
    shutil.rmtree(folder, ignore_errors=True)
    building = root / "modes.partial"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)

    y, x = np.mgrid[0:SIZE, 0:SIZE]
    scene = np.zeros((SIZE, SIZE, 3), np.uint8)
    scene[:] = (38, 56, 112)
    scene[SIZE - 96:] = (64, 150, 70)
    scene[(y - 240) ** 2 + (x - 160) ** 2 <= 96 ** 2] = (228, 52, 44)
    scene[96:240, 304:448] = (242, 200, 40)
    scene[np.abs(x - 376) + np.abs(y - 336) <= 64] = (150, 60, 200)
    Image.fromarray(scene, "RGB").save(building / "init.png")
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[152:360, 280:472] = 255
    Image.fromarray(mask, "L").save(building / "mask.png")
    control = Image.new("RGB", (SIZE, SIZE), (0, 0, 0))
    draw = ImageDraw.Draw(control)
    s = SIZE / 64
    P = lambda px, py: (round(px * s), round(py * s))  # noqa: E731
    white = (255, 255, 255)
    draw.ellipse([P(25, 5), P(39, 19)], outline=white, width=8)
    draw.line([P(32, 19), P(32, 40)], fill=white, width=8)
    draw.line([P(16, 22), P(32, 27), P(48, 20)], fill=white, width=8)
    draw.line([P(20, 58), P(32, 40), P(45, 57)], fill=white, width=8)
    control.save(building / "control.png")

    unet = UNet2DConditionModel.from_pretrained(root / "model" / "unet", dtype=torch.float32)
    controlnet = ControlNetModel.from_unet(unet)
    del unet
    randomize_(controlnet, "controlnet")
    controlnet.half().save_pretrained(building / "controlnet", safe_serialization=True)
    del controlnet
    write_json(building / "stamp.json", stamp)
    building.rename(folder)
    emit({"prepared": True, "seconds": time.perf_counter() - start})


def bench_modes(root, out, threads, image_runs):
    """Each conditioned mode as a user runs it in diffusers, from the same initial latents
    as `bench`'s whole image: img2img at IMG2IMG_STRENGTH, inpainting with the (4-channel)
    model and the mask at strength 1, one ControlNet at CONTROL_SCALE, and tiling on both
    axes (every padded Conv2d of the UNet and VAE decoder switched to circular padding, as
    diffusers#556 does it). As in pixelgen, an init image is encoded to its latent
    distribution's mean (retrieve_latents patched to "argmax") and the noise added to it is
    the given latents (randn_tensor patched), so the images can be compared."""
    import torch

    torch.set_num_threads(threads)
    import diffusers
    import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img as img2img_module
    import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint as inpaint_module
    import transformers
    from diffusers import (
        ControlNetModel,
        EulerDiscreteScheduler,
        StableDiffusionControlNetPipeline,
        StableDiffusionImg2ImgPipeline,
        StableDiffusionInpaintPipeline,
        StableDiffusionPipeline,
    )
    from PIL import Image
    from safetensors.torch import load_file

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    folder = root / "modes"
    latents = load_file(str(root / "inputs.safetensors"))["latents"]
    init = Image.open(folder / "init.png").convert("RGB")
    mask = Image.open(folder / "mask.png").convert("L")
    control = Image.open(folder / "control.png").convert("RGB")

    text_to_image = StableDiffusionPipeline.from_pretrained(root / "model", dtype=torch.float32, safety_checker=None)
    controlnet = ControlNetModel.from_pretrained(folder / "controlnet", dtype=torch.float32)
    pipes = {
        "txt2img": text_to_image,
        "img2img": StableDiffusionImg2ImgPipeline.from_pipe(text_to_image),
        "inpaint": StableDiffusionInpaintPipeline.from_pipe(text_to_image),
        "controlnet": StableDiffusionControlNetPipeline.from_pipe(text_to_image, controlnet=controlnet),
    }
    for pipe in pipes.values():
        pipe.scheduler = EulerDiscreteScheduler.from_config(text_to_image.scheduler.config)
        pipe.set_progress_bar_config(disable=True)

    def mean_latents(encoder_output, generator=None, sample_mode="sample"):
        return encoder_output.latent_dist.mode()

    def given_noise(shape, generator=None, device=None, dtype=None, layout=None):
        assert tuple(shape) == tuple(latents.shape), (shape, latents.shape)
        return latents.clone().to(dtype=dtype)

    for module in (img2img_module, inpaint_module):
        module.retrieve_latents = mean_latents
        module.randn_tensor = given_noise

    common = dict(prompt=PROMPT, num_inference_steps=STEPS, guidance_scale=GUIDANCE, output_type="pil")
    runs = {
        # First: the base the others are compared with, in the same process.
        "txt2img": ("txt2img", dict(height=SIZE, width=SIZE, latents=latents.clone())),
        "img2img": ("img2img", dict(image=init, strength=IMG2IMG_STRENGTH)),
        "inpaint": ("inpaint", dict(image=init, mask_image=mask, strength=1.0, height=SIZE, width=SIZE,
                                    latents=latents.clone())),
        "controlnet": ("controlnet", dict(image=control, controlnet_conditioning_scale=CONTROL_SCALE,
                                          height=SIZE, width=SIZE, latents=latents.clone())),
        "tiling": ("txt2img", dict(height=SIZE, width=SIZE, latents=latents.clone())),
    }
    result = {"threads": torch.get_num_threads(), "modes": {}}
    # One untimed step first: the process's first call pays for allocations and kernel
    # selection (pixelgen's modes run in a process that has drawn already).
    with torch.inference_mode():
        text_to_image(**dict(common, num_inference_steps=1), height=SIZE, width=SIZE, latents=latents.clone())
    for mode, (pipe_name, arguments) in runs.items():
        pipe = pipes[pipe_name]
        circular = []
        if mode == "tiling":
            for module in [pipe.unet, pipe.vae.decoder, pipe.vae.post_quant_conv]:
                for conv in module.modules():
                    if isinstance(conv, torch.nn.Conv2d) and conv.padding != (0, 0):
                        conv.padding_mode = "circular"
                        circular.append(conv)
        steps = []
        hook = pipe.unet.register_forward_pre_hook(lambda *_: steps.append(1))
        samples = []
        for _ in range(image_runs):
            steps.clear()
            start = time.perf_counter()
            with torch.inference_mode():
                image = pipe(**common, **arguments).images[0]
            samples.append(time.perf_counter() - start)
        hook.remove()
        for conv in circular:
            conv.padding_mode = "zeros"
        image.save(out.parent / f"diffusers_{mode}.png")
        result["modes"][mode] = {"seconds": samples, "unet_calls": len(steps)}
    result["peak_rss_bytes"] = peak_rss_bytes()
    write_json(out, result)
    emit(result)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check")
    p = sub.add_parser("prepare")
    p.add_argument("dir", type=Path)
    b = sub.add_parser("bench")
    b.add_argument("dir", type=Path)
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--runs", type=int, default=3)
    b.add_argument("--image-runs", type=int, default=2)
    pm = sub.add_parser("prepare-modes")
    pm.add_argument("dir", type=Path)
    m = sub.add_parser("modes")
    m.add_argument("dir", type=Path)
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--threads", type=int, default=2)
    m.add_argument("--image-runs", type=int, default=1)
    args = parser.parse_args()
    if args.command == "check":
        check()
    elif args.command == "prepare":
        args.dir.mkdir(parents=True, exist_ok=True)
        prepare(args.dir)
    elif args.command == "prepare-modes":
        prepare_modes(args.dir)
    elif args.command == "modes":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        bench_modes(args.dir, args.out, args.threads, args.image_runs)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        bench(args.dir, args.out, args.threads, args.runs, args.image_runs)


if __name__ == "__main__":
    main()
