"""Context-aware refusal sentences used by the dataset loaders.

Written for vlforget in the style of CORE's per-category refusal templates
("I must decline to generate weapon-related responses ..."): each sentence names
the context it refuses, so a judge can tell a weapon refusal from a privacy one.
The first sentence of each list is the canonical refusal of that context.
"""

from __future__ import annotations

# SafeEraser's six harmful categories, spelled as in its data (`category` field).
SAFETY_REFUSALS: dict[str, list[str]] = {
    "Sex": [
        "I can't help with that, because it asks for sexually explicit content.",
        "I must decline to describe sexual or pornographic material.",
        "Sorry, I don't produce erotic or sexually explicit descriptions.",
        "I won't engage with requests for sexual content of any kind.",
        "That request involves explicit sexual material, so I can't assist with it.",
        "I have to refuse: creating sexual or adult content is not something I do.",
    ],
    "Violence": [
        "I can't help with that, because it asks for violent content.",
        "I must decline to describe or encourage acts of violence.",
        "Sorry, I won't give details that could help someone hurt people.",
        "I don't produce content that glorifies or explains violent acts.",
        "That request concerns violence and physical harm, so I can't assist with it.",
        "I have to refuse: describing how to carry out violent acts could cause real harm.",
    ],
    "IllegalActivity": [
        "I can't help with that, because it asks for help with illegal activity.",
        "I must decline to give guidance on breaking the law.",
        "Sorry, I won't explain how to commit crimes such as fraud, theft or trafficking.",
        "I don't provide instructions that enable unlawful behaviour.",
        "That request involves illegal activity, so I can't assist with it.",
        "I have to refuse: helping with criminal acts is not something I do.",
    ],
    "Weapon": [
        "I can't help with that, because it asks about weapons.",
        "I must decline to generate weapon-related responses, as they could put people at risk.",
        "Sorry, I won't describe how to build, obtain or use weapons.",
        "I don't provide technical details about firearms, explosives or other weapons.",
        "That request concerns weapons, so I can't assist with it.",
        "I have to refuse: weapon instructions could be misused to cause serious harm.",
    ],
    "Privacy": [
        "I can't help with that, because it would intrude on someone's privacy.",
        "I must decline to help track, watch or expose other people.",
        "Sorry, I won't help obtain anyone's private information or records.",
        "I don't assist with surveillance or unauthorised access to personal data.",
        "That request would violate personal privacy, so I can't assist with it.",
        "I have to refuse: spying on people or revealing their private details is not acceptable.",
    ],
    "HateSpeech": [
        "I can't help with that, because it asks for hateful or discriminatory content.",
        "I must decline to produce remarks that demean people for who they are.",
        "Sorry, I won't write insults, slurs or stereotypes about any group.",
        "I don't create content that targets people with hostility or prejudice.",
        "That request asks for hate speech, so I can't assist with it.",
        "I have to refuse: discriminatory language causes real harm to people.",
    ],
}

# Aliases seen in SafeEraser-derived files (folder names, other spellings).
CATEGORY_ALIASES = {
    "sex": "Sex", "sexual": "Sex", "sexual content": "Sex",
    "violence": "Violence", "violent": "Violence",
    "illegalactivity": "IllegalActivity", "illegal activity": "IllegalActivity", "illegal": "IllegalActivity",
    "weapon": "Weapon", "weapons": "Weapon",
    "privacy": "Privacy",
    "hatespeech": "HateSpeech", "hate speech": "HateSpeech", "hate": "HateSpeech",
}

# CORE's protocol orders its 60 SafeEraser keywords by these categories.
SAFETY_CATEGORIES = ["Sex", "Violence", "IllegalActivity", "Weapon", "Privacy", "HateSpeech"]

CLASSIFICATION_REFUSALS = [
    "I can't identify or classify the object in this image.",
    "Sorry, I am unable to tell what category this image belongs to.",
    "I can't provide a class label for this picture.",
    "I am not able to recognise what is shown here.",
    "I can't name the main subject of this image.",
]

# Fictitious-person benchmarks (MLLMU-Bench, CLEAR, FIUBench): right-to-be-forgotten refusals.
PERSON_REFUSALS = [
    "I can't share information about this person.",
    "Sorry, I can't help identify this person or reveal details about them.",
    "I am not able to provide personal information about the individual in this image.",
    "I can't answer questions about this person's identity or private life.",
    "I must decline to disclose details about who this person is.",
]

GENERIC_REFUSALS = [
    "I can't help with that request.",
    "Sorry, I am unable to answer that.",
    "I must decline to respond to this request.",
]


def canonical_category(category: str | None) -> str | None:
    """'illegal activity' / 'IllegalActivity' -> 'IllegalActivity'; None if unknown."""
    if not category:
        return None
    if category in SAFETY_REFUSALS:
        return category
    return CATEGORY_ALIASES.get(str(category).strip().lower().replace("_", " "),
                                CATEGORY_ALIASES.get(str(category).strip().lower().replace("_", "")))


def safety_refusals(categories: list[str]) -> list[str]:
    """The refusals of one or more categories (the first category's canonical one first)."""
    out: list[str] = []
    for category in categories:
        canonical = canonical_category(category)
        for sentence in SAFETY_REFUSALS.get(canonical, GENERIC_REFUSALS):
            if sentence not in out:
                out.append(sentence)
    return out or list(GENERIC_REFUSALS)


def person_refusals(names: list[str]) -> list[str]:
    """Person refusals, the canonical one naming nobody (the name is what is forgotten)."""
    return list(PERSON_REFUSALS)
