"""Raw multimodal inputs: event-camera streams (EventGPT draft) and RGB clips (Video-LLaVA target)."""

from phide.io.events import (
    EVENTGPT_MAX_SPAN_US,
    EventStream,
    last_window,
    load_event_frames,
    load_events,
    render_event_frames,
    window,
)
from phide.io.video import load_video_frames, sample_frame_indices

__all__ = [
    "EVENTGPT_MAX_SPAN_US",
    "EventStream",
    "last_window",
    "load_event_frames",
    "load_events",
    "load_video_frames",
    "render_event_frames",
    "sample_frame_indices",
    "window",
]
