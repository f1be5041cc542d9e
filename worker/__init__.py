"""wanserve's torch half: the resident model, the denoising loop and the RQ entry point."""
