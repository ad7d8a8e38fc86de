"""Reading video: finding files (discover), decoding frames at true times (decode), timecodes."""
