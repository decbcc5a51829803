"""The redaction rule of yoked transcripts (explainers/screening.py): what it replaces, and what it leaves alone."""
import pytest

from explainers.screening import EMAIL, LINK, NAME, PHONE, text_redact, transcript_redact


@pytest.mark.parametrize("text", [
    "write to anna.berg@example.org please",
    "ANNA_B+loans@mail.example.co.uk",
])
def test_email_addresses_are_replaced(text):
    redacted = text_redact(text)
    assert EMAIL in redacted and "@" not in redacted


@pytest.mark.parametrize("text, left", [
    ("see https://evil.example.com/phish?x=1 now", "see  now"),
    ("go to www.example.org/loans.", "go to ."),
    ("my site is annaberg.com", "my site is "),
    ("read <https://auto.example.net> first", "read  first"),
    ("ftp://files.example.org/x.csv", ""),
])
def test_web_addresses_are_replaced(text, left):
    redacted = text_redact(text)
    assert LINK in redacted and redacted.replace(LINK, "") == left


def test_a_markdown_link_keeps_its_text_and_loses_its_address():
    redacted = text_redact("Read [the bank's guide](https://bank.example.com/guide) and [https://x.io](https://x.io).")
    assert redacted == f"Read the bank's guide {LINK} and {LINK}."


@pytest.mark.parametrize("text", [
    "call me on +44 20 7946 0958",
    "my phone: 555-123-4567",
    "(555) 123-4567 is mine",
    "it is 555.123.4567",
    "1 800 555 0199",
    "+4915112345678",
    "5551234567",
    "my number is 5555-1234",
    "text me at 0171 5551234",
])
def test_phone_numbers_are_replaced(text):
    redacted = text_redact(text)
    assert PHONE in redacted and sum(c.isdigit() for c in redacted) <= 2, redacted


@pytest.mark.parametrize("text", [
    "income 41.5 and debt ratio 0.18",
    "the tool said income: 41.0001 gives approve, employment_years: 22.0000001 too",
    "on 2024-03-15, 15.03.2024 or 03/15/2024",
    "an income of $41,500 or 41,500 dollars, €52 000, £ 1250000 a year",
    "between 40000-60000 per year, 1250000 USD, 4500000 euros",
    "incomes of 41500 and 52000, 35000 to 80000",
    "a score of 4500000",
    "scores 10 20 30 40 50 60 70",
    "applicant 12 of 150, 3 years, 2.5 %",
    "probability 0.8125, log-odds -1.3862",
    "the model was fitted in 2026 on 1200 rows with seed 1234567",
])
def test_numbers_of_the_loan_example_are_not_phone_numbers(text):
    assert text_redact(text) == text


@pytest.mark.parametrize("text, name", [
    ("Hi, my name is Anna Berg and I earn 41.5k.", "Anna Berg"),
    ("my name is anna, hi", "anna"),
    ("I'm Bob. What does the model do?", "Bob"),
    ("i am Chiara Rossi", "Chiara Rossi"),
    ("Hello, this is Dmitri", "Dmitri"),
    ("call me Eve please", "Eve"),
    ("Name: Farid", "Farid"),
    ("That helps a lot.\n\nThanks,\nGreta", "Greta"),
    ("That helps.\nBest regards, Hana Kim", "Hana Kim"),
    ("ok, got it\n- Ivo", "Ivo"),
])
def test_names_the_participant_gives_are_replaced(text, name):
    redacted = text_redact(text)
    assert NAME in redacted and name not in redacted


@pytest.mark.parametrize("text", [
    "I'm not sure what the model does.",
    "I'm Confused about the debt ratio",
    "I am interested in income. This is Important?",
    "Thanks for explaining",
    "thanks, that helps",
    "Call me when you know",
    "Income matters most, I think.",
])
def test_sentences_without_a_name_are_left_alone(text):
    assert text_redact(text) == text


def test_a_name_is_replaced_wherever_it_recurs_in_either_side_of_the_transcript():
    redacted = transcript_redact([
        ("explainer", "Hello! What should I call you?"),
        ("participant", "My name is Anna Lindqvist."),
        ("explainer", "Nice to meet you, Anna! ANNA, Anna's case: income 41.5k. Lindqvist is a fine name."),
        ("participant", "Annabel is my sister."),
    ])
    assert redacted.texts[1] == f"My name is {NAME}."
    assert redacted.texts[2] == f"Nice to meet you, {NAME}! {NAME}, {NAME}'s case: income 41.5k. {NAME} is a fine name."
    assert redacted.texts[3] == "Annabel is my sister."  # another word: left as written
    assert redacted.counts == {"name": 5}


def test_the_model_introducing_itself_gives_no_name_to_redact():
    redacted = transcript_redact([("explainer", "I'm Tutor, your guide."), ("participant", "Hi Tutor!")])
    assert redacted.texts == ["I'm Tutor, your guide.", "Hi Tutor!"] and redacted.counts == {}


def test_counts_say_how_many_of_each_kind_were_replaced_and_the_input_is_not_changed():
    turns = [("participant", "I'm Bob, bob@example.org, +1 202 555 0143, see example.com"),
             ("explainer", "Thanks Bob, income 41.5 matters. More: [guide](https://g.example.org)")]
    original = [t for t in turns]
    redacted = transcript_redact(turns)
    assert turns == original
    assert redacted.counts == {"email": 1, "phone": 1, "link": 2, "name": 2} and redacted.total == 6
    assert redacted.texts[1] == f"Thanks {NAME}, income 41.5 matters. More: guide {LINK}"
