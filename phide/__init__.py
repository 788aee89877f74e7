"""phide: lossless speculative decoding that hides an event-camera draft inside a video target's prefill."""

__version__ = "0.1.0"
