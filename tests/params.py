"""The small request the engine tests (unit) and the equivalence runs (distributed) generate."""

from service.core.schemas import GenerationParams

PARAMS = GenerationParams(
    prompt="a red fox in the snow",
    negative_prompt="blurry",
    width=64,
    height=64,
    num_frames=17,
    fps=16,
    num_inference_steps=4,
    guidance_scale=5.0,
    seed=1234,
)
