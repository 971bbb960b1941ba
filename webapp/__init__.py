"""The Gradio app's handlers: form values in, display-ready results out (wiring beside app.py)."""
