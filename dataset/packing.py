"""Bin-packing samples into rows of at most `capacity` positions."""
from bisect import bisect_left, insort


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Rows of sample indices: longest samples first, each into the open row it fills most tightly.

    Deterministic (ties keep input order). Rows are found by bisecting over the distinct
    room sizes that are open (at most `capacity` of them), so packing costs O(n log n).
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    rows_with_room: dict[int, list[int]] = {}  # room left -> rows with exactly that much room
    rooms: list[int] = []  # sorted keys of rows_with_room
    for i in order:
        length = lengths[i]
        if not 0 < length <= capacity:
            raise ValueError(f"sample {i} has {length} positions; expected 1..{capacity}")
        k = bisect_left(rooms, length)
        if k == len(rooms):
            row, room = len(rows), capacity
            rows.append([])
        else:
            room = rooms[k]
            row = rows_with_room[room].pop()
            if not rows_with_room[room]:
                del rows_with_room[room]
                rooms.pop(k)
        rows[row].append(i)
        room -= length
        if room:
            if room not in rows_with_room:
                rows_with_room[room] = []
                insort(rooms, room)
            rows_with_room[room].append(row)
    return rows
