"""What a job says in words: "bob liked your post", "bob and 4 others liked your post".

Pure: the email templates, the Web Push payload and the webhook body all use it.
"""

from __future__ import annotations

from collections.abc import Sequence

from .jobs import Job, JobItem

# What the actors did, per type (the six default types); others get the generic one.
PHRASES: dict[str, str] = {
    "post_liked": "liked your post",
    "post_commented": "commented on your post",
    "user_followed": "started following you",
    "user_mentioned": "mentioned you",
    "friend_request": "sent you a friend request",
    "direct_message": "sent you a message",
}
GENERIC_PHRASE = "sent you a notification"
NOBODY = "Someone"


def phrase(type: str) -> str:
    return PHRASES.get(type, GENERIC_PHRASE)


def newest_first(items: Sequence[JobItem]) -> list[JobItem]:
    """Most recent first; rows of the same millisecond in reverse of their order."""
    ordered = list(reversed(items))
    ordered.sort(key=lambda item: item.created_at, reverse=True)
    return ordered


def actors(items: Sequence[JobItem]) -> list[str]:
    """The distinct actors, most recent first (rows without one are left out)."""
    seen: dict[str, None] = {}
    for item in newest_first(items):
        if item.actor is not None:
            seen.setdefault(item.actor)
    return list(seen)


def names(people: Sequence[str]) -> str:
    """ "bob", "bob and carol", "bob and 4 others"; "Someone" for nobody."""
    if not people:
        return NOBODY
    if len(people) == 1:
        return people[0]
    if len(people) == 2:
        return f"{people[0]} and {people[1]}"
    return f"{people[0]} and {len(people) - 1} others"


def summary(job: Job) -> str:
    """One line for the whole job, digest or not."""
    people = actors(job.items)
    text = f"{names(people)} {phrase(job.type)}"
    # Several rows with no more than one known actor: say how many there were.
    if len(job.items) > 1 and len(people) <= 1:
        text += f" ({len(job.items)} times)"
    return text


def line(type: str, item: JobItem) -> str:
    """One row of a digest's list."""
    return f"{item.actor or NOBODY} {phrase(type)}"
