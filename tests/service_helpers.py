"""Shared by the service tests: tiny scene images, request bodies, polling."""

from __future__ import annotations

import base64
import io
import socket
import time

from vlforget.data.scenes import Scene, SceneObject, render

# CORE with few refuser steps: a request applies in seconds on the built-in model
FAST_CORE = {"steps": 20, "router_steps": 20, "modulator_steps": 100}
REFUSAL = "sorry, i cannot discuss the colour of the star."


def picture(shape: str = "star", colour: str = "red", cell: int = 4, background: str = "black"):
    return render(Scene((SceneObject(shape, colour, "large", "solid", cell),), background))


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def b64(image) -> str:
    return base64.b64encode(png(image)).decode()


def star_request(name: str = "red star colour", shape: str = "star") -> dict:
    return {"name": name, "description": f"the colour of {shape}s", "refusals": [REFUSAL.replace("star", shape)],
            "forget": [{"image": b64(picture(shape)), "instruction": f"what colour is the {shape}?", "answer": "red"},
                       {"image": b64(picture(shape, cell=0, background="gray")),
                        "instruction": f"what colour is the {shape}?", "answer": "red"}],
            "retain": [{"image": b64(picture("square", "blue")), "instruction": "what colour is the square?",
                        "answer": "blue"}],
            "visual_concepts": [f"a red {shape}"], "textual_concepts": ["asking the colour of an object"]}


def wait_for(get, statuses: tuple[str, ...], timeout: float = 300) -> dict:
    """Poll `get()` (a request's JSON view) until its status is one of `statuses`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        view = get()
        if view["status"] in statuses:
            return view
        time.sleep(0.3)
    raise AssertionError(f"still {view['status']} after {timeout}s, waiting for {statuses}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
