"""One pass over a video: shot detection (detect/), sampling, the per-video analysis that
embeds samples, thumbnails, frame quality and keyframes."""
