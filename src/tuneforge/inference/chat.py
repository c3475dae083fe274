"""`tuneforge chat`: an interactive terminal conversation that streams the model's tokens."""

from pathlib import Path

from tuneforge.inference.session import ChatSession


def interactive_chat(run_dir: Path, max_new_tokens: int) -> None:
    session = ChatSession.from_run(run_dir)
    print(f"Chatting with {run_dir}. Commands: /reset (new conversation), /quit. Ctrl-D also quits.")
    if session.one_turn:
        print("(an encoder-decoder: each prompt is answered on its own, as in training)")
    messages: list[dict] = []
    while True:
        try:
            text = input("\nyou> ").strip()
        except EOFError:
            print()
            return
        if text in ("/quit", "/exit"):
            return
        if text == "/reset":
            messages = []
            print("(new conversation)")
            continue
        if not text:
            continue
        if session.one_turn:
            messages = []
        messages.append({"role": "user", "content": text})
        print("model> ", end="", flush=True)
        answer = session.reply(messages, max_new_tokens, stream=True)
        messages.append({"role": "assistant", "content": answer})
