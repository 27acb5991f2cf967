"""Simulated Ollama and vLLM nodes that speak the engines' real wire protocols.

`python -m sim ollama|vllm --port P --models a,b` starts one; `sim.generation` says what it will answer.
"""
