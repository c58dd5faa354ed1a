"""What a run shows of itself: metrics, the log and progress line, TensorBoard, trackers, curves and images."""
