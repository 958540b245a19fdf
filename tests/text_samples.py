"""Intent classes and sample texts (mixed case, long, empty) shared by the text tests."""

CLASSES = ["card_lost", "refund", "top_up"]
TEXTS = [
    "my card was stolen",
    "Where is my REFUND?",
    "how do i top up my account",
    "pin blocked",
    "the atm did not give me cash and my balance is not working please help",
    "",
]
