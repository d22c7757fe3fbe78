"""The CPU preview engine: a storyboard video from the references and the prompt."""
