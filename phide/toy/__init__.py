"""A toy world seen by two sensors, for training and testing a small draft/target pair on a CPU.

`phide.toy.world`: scenes of a few coloured shapes moving (or not) over a fixed dark-grey gradient,
rendered as RGB frames (what the Video-LLaVA-style target sees) and as an event stream from an
idealised event-camera simulator (what the EventGPT-style draft sees). Every palette colour has the
same luminance, so events show motion and shape but carry no colour at all; template questions and
answers, and `score_answer` to judge a generated answer on motion and on colour separately.

`phide.toy.tokenizer`: a small BPE tokenizer trained on the world's corpus plus the real prompt
templates, saved in HF format.
"""

from phide.toy.world import (BACKGROUND_RANGE, COLOURS, DIRECTIONS, OBJECT_LUMA, QUESTIONS, SHAPES, SIZES,
                             SPEEDS, Obj, Sample, Scene, answer, background, colour_facts, corpus, extract_facts,
                             frame_times_s, luminance, make_dataset, motion_facts, object_masks, questions_for,
                             region, render_frames, render_luminance, sample_scene, scene_seed, score_answer,
                             simulate_events)

__all__ = [
    "BACKGROUND_RANGE", "COLOURS", "DIRECTIONS", "OBJECT_LUMA", "QUESTIONS", "SHAPES", "SIZES", "SPEEDS", "Obj",
    "Sample", "Scene", "answer", "background", "colour_facts", "corpus", "extract_facts", "frame_times_s",
    "luminance", "make_dataset", "motion_facts", "object_masks", "questions_for", "region", "render_frames",
    "render_luminance", "sample_scene", "scene_seed", "score_answer", "simulate_events",
]
