"""The paper's other tasks as edits: keypoint circles, segmentation overlays, enhancement, captions."""
