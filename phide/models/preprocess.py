"""Settings shared by the CLIP-style image preprocessors of both adapters.

Video-LLaVA (`phide.models.video_llava.FrameSpec`, torch's antialiased bicubic on uint8, like
VideoLlavaVideoProcessor) and EventGPT (`phide.models.eventgpt.ClipPreprocess`, PIL bicubic, like
the CLIPImageProcessor it was trained with) resize differently; what follows the resize reads the
same processor-config keys in both.
"""

from __future__ import annotations

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _triple(v, default) -> tuple[float, float, float]:
    v = default if v is None else v
    return tuple(float(x) for x in (v if isinstance(v, (list, tuple)) else [v] * 3))


def common_fields(d: dict) -> dict:
    """The resize/crop switches, rescale and normalisation of a processor config dict."""
    return {
        "do_resize": bool(d.get("do_resize", True)),
        "do_center_crop": bool(d.get("do_center_crop", True)),
        "do_rescale": bool(d.get("do_rescale", True)),
        "rescale_factor": float(d.get("rescale_factor", 1 / 255)),
        "do_normalize": bool(d.get("do_normalize", True)),
        "image_mean": _triple(d.get("image_mean"), OPENAI_CLIP_MEAN),
        "image_std": _triple(d.get("image_std"), OPENAI_CLIP_STD),
    }
