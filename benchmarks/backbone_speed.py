"""Fine-tuning and inference images/s of the classifier per backbone and input size, side by side.

The model the fine-tuning stage builds (``model.build_classifier``: forensic channels, backbone, head;
frozen BatchNorm as ``finetune.freeze_bn``), AdamW, BCE; random batches, no loader. One warm-up step,
then the mean of ``--steps`` steps. For choosing ``model.img_size`` and the backbone on a CPU: read
the ratios, not the absolute figures (a shared CPU varies from run to run).

    python benchmarks/backbone_speed.py --backbones efficientnet_lite0,convnextv2_atto --sizes 128,160,224
    python benchmarks/backbone_speed.py --backbones efficientnet_lite0 --sizes 224 --freeze 0,3,4 --channels rgb
    python benchmarks/backbone_speed.py --backbones efficientnet_lite2 --sizes 192 --freeze 3 --channels rgb \
        --memory-formats contiguous,channels_last
    python benchmarks/backbone_speed.py --backbones efficientnet_lite2 --sizes 192 --freeze 3 --channels rgb \
        --memory-formats channels_last --amp off,bf16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from deepfake_pipeline.config import load_config  # noqa: E402
from deepfake_pipeline.model import build_classifier  # noqa: E402


def images_per_s(backbone: str, size: int, batch: int, steps: int, freeze: int = 0,
                 channels: str = "rgb,fft,srm", channels_last: bool = False,
                 amp: str = "off") -> tuple[float, float]:
    cfg = load_config(None, ["run.name=speed", f"model.backbone={backbone}", "ssl.enabled=false",
                             "finetune.init=scratch", f"model.img_size={size}",
                             f"model.channels=[{channels}]"])
    model = build_classifier(cfg.model)
    model.freeze_bn = True
    model.freeze_stages(freeze)  # random weights: speed only
    x, y = torch.rand(batch, 3, size, size), torch.randint(0, 2, (batch,)).float()
    if channels_last:  # as engine.to_device_float and the training loop do with run.channels_last
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    # bf16 autocast as the engine's ``run.amp=bf16`` (weights and optimizer state stay fp32)
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16")  # noqa: E731
    model.train()
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)
    for step in range(steps + 1):
        if step == 1:
            start = time.perf_counter()
        with autocast():
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    train = batch * steps / (time.perf_counter() - start)
    model.eval()
    with torch.no_grad(), autocast():
        model(x)
        start = time.perf_counter()
        for _ in range(steps):
            model(x)
    return train, batch * steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", default="efficientnet_lite0,convnextv2_atto")
    p.add_argument("--sizes", default="128,160,224")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--freeze", default="0", help="finetune.freeze_stages values, comma-separated")
    p.add_argument("--channels", default="rgb,fft,srm", help="model.channels, comma-separated")
    p.add_argument("--memory-formats", default="contiguous", help="contiguous and/or channels_last")
    p.add_argument("--amp", default="off", help="off and/or bf16 (CPU autocast), comma-separated")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("| backbone | px | frozen stages | memory format | amp | train img/s | inference img/s |\n"
          "|---|---|---|---|---|---|---|")
    for backbone in args.backbones.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            for freeze in (int(f) for f in args.freeze.split(",")):
                for fmt in args.memory_formats.split(","):
                    if fmt not in ("contiguous", "channels_last"):
                        p.error(f"--memory-formats: {fmt!r} is neither contiguous nor channels_last")
                    for amp in args.amp.split(","):
                        if amp not in ("off", "bf16"):
                            p.error(f"--amp: {amp!r} is neither off nor bf16")
                        train, infer = images_per_s(backbone, size, args.batch, args.steps, freeze, args.channels,
                                                    fmt == "channels_last", amp)
                        print(f"| {backbone} | {size} | {freeze} | {fmt} | {amp} | {train:.1f} | {infer:.1f} |",
                              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
