"""A RetinaFace face detector with seeded random weights, in facexlib's real architecture and checkpoint layout.

    python scripts/tiny_retinaface.py OUT.pth

It is RetinaFace with the MobileNet-0.25 backbone (facexlib's `mobile0.25`, the small one of the two the RetinaFace
authors published; 0.4 M parameters, 1.7 MB), saved as a plain state dict with the `module.` prefix of the published
files, so it loads through the same code as `detection_Resnet50_Final.pth`. Its classification heads are biased to
"face" everywhere at the coarsest level (stride 32) and "no face" at the others, so the detector reports a few
faces (with five landmarks each) on any image: enough to run face fixing end to end offline, not to find real faces.
"""

import sys
from pathlib import Path

import torch

FACE_LOGIT_BIAS = 8.0  # softmax(-8, 8)[1] = 1 - 1e-7: above any score threshold


def make_tiny_retinaface(path) -> Path:
    from facexlib.detection.retinaface import RetinaFace

    generator = torch.Generator().manual_seed(0)
    model = RetinaFace(network_name="mobile0.25", half=False, device=torch.device("cpu"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(noise / param[0].numel() ** 0.5 if param.ndim >= 2 else 0.1 * noise)
        for level, head in enumerate(model.ClassHead):  # "face" only at the coarsest level: few boxes per image
            sign = 1.0 if level == len(model.ClassHead) - 1 else -1.0
            head.conv1x1.weight.zero_()
            logits = torch.tensor([-FACE_LOGIT_BIAS, FACE_LOGIT_BIAS]) * sign
            head.conv1x1.bias.copy_(logits.repeat(head.conv1x1.out_channels // 2))
    state_dict = {f"module.{name}": tensor.contiguous() for name, tensor in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, path)
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(make_tiny_retinaface(sys.argv[1]))
