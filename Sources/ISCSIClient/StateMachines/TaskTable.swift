/// Outstanding tasks indexed by Initiator Task Tag (RFC 7143 §11.2.1.8).
///
/// An ITT is `generation << 16 | slot`: the slot indexes an array (no hashing, no allocation per task
/// once warmed up) and the generation, bumped each time a slot is reused, makes a late PDU for a
/// finished task miss instead of hitting the slot's new occupant. Slots stay below 0xFFF0, so the
/// reserved value 0xffffffff is never assigned, nor are the fixed tags `TaskTable.reservedTags`.
public struct TaskTable<Element> {
    private var slots: [Element?]
    private var generations: [UInt16]
    private var free: [Int]
    public private(set) var count = 0
    public let capacity: Int

    /// Tags the table never hands out, left for the connection's own exchanges (login, ping, logout).
    public static var firstReservedSlot: UInt32 { 0xFFF0 }

    public init(capacity: Int) {
        precondition(capacity > 0 && capacity < 0xFFF0, "capacity must be 1..<65520")
        self.capacity = capacity
        self.slots = Array(repeating: nil, count: capacity)
        self.generations = Array(repeating: 0, count: capacity)
        self.free = Array((0..<capacity).reversed())
    }

    public var isEmpty: Bool { count == 0 }
    public var isFull: Bool { free.isEmpty }

    /// Stores `element` and returns its ITT; nil when full.
    public mutating func insert(_ makeElement: (UInt32) -> Element) -> UInt32? {
        guard let slot = free.popLast() else { return nil }
        generations[slot] &+= 1
        let itt = UInt32(generations[slot]) << 16 | UInt32(slot)
        slots[slot] = makeElement(itt)
        count += 1
        return itt
    }

    /// The slot holding the task with this ITT, or nil (unknown, finished, or reserved tag).
    public func slot(for itt: UInt32) -> Int? {
        let slot = Int(itt & 0xFFFF)
        guard slot < capacity, slots[slot] != nil, generations[slot] == UInt16(itt >> 16) else { return nil }
        return slot
    }

    public subscript(slot slot: Int) -> Element? { slots[slot] }

    /// Mutates the element in place (no copy of the element's buffers).
    public mutating func modify<R, Failure: Error>(slot: Int, _ body: (inout Element) throws(Failure) -> R) throws(Failure) -> R? {
        guard slots[slot] != nil else { return nil }
        return try body(&slots[slot]!)
    }

    public mutating func remove(slot: Int) -> Element? {
        guard let element = slots[slot] else { return nil }
        slots[slot] = nil
        free.append(slot)
        count -= 1
        return element
    }

    /// Calls `body` with the ITT and element of every occupied slot.
    public func forEach(_ body: (UInt32, Element) -> Void) {
        for slot in 0..<capacity {
            if let element = slots[slot] { body(UInt32(generations[slot]) << 16 | UInt32(slot), element) }
        }
    }

    /// Removes and returns the elements that match (e.g. the tasks of a reset logical unit).
    public mutating func removeAll(where shouldRemove: (Element) -> Bool) -> [Element] {
        var removed: [Element] = []
        for slot in 0..<capacity {
            if let element = slots[slot], shouldRemove(element) {
                removed.append(element)
                slots[slot] = nil
                free.append(slot)
                count -= 1
            }
        }
        return removed
    }

    /// Removes and returns every element (connection loss).
    public mutating func removeAll() -> [Element] {
        var all: [Element] = []
        all.reserveCapacity(count)
        for slot in 0..<capacity {
            if let element = slots[slot] {
                all.append(element)
                slots[slot] = nil
                free.append(slot)
            }
        }
        count = 0
        return all
    }
}
