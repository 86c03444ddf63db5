import ISCSIProtocol
import Testing

/// RFC 1982 serial number arithmetic, as RFC 7143 §4.2.2.1 requires.
struct SerialNumberTests {
    @Test func ordinaryComparison() {
        #expect(SerialNumber(1) < SerialNumber(2))
        #expect(SerialNumber(2) > SerialNumber(1))
        #expect(!(SerialNumber(5) < SerialNumber(5)))
        #expect(SerialNumber(5) <= SerialNumber(5))
        #expect(SerialNumber(5) >= SerialNumber(5))
    }

    @Test func wraparound() {
        let max = SerialNumber(0xFFFF_FFFF)
        #expect(max < SerialNumber(0))
        #expect(SerialNumber(0) > max)
        #expect(SerialNumber(0xFFFF_FFF0) < SerialNumber(0x10))
        #expect(max + 1 == SerialNumber(0))
        #expect((max + 5).rawValue == 4)
        #expect(SerialNumber(2).distance(from: max) == 3)
        var s = SerialNumber(0xFFFF_FFFE)
        s += 3
        #expect(s == SerialNumber(1))
    }

    @Test func halfwayIsUndefined() {
        let a = SerialNumber(0)
        let b = SerialNumber(0x8000_0000)
        #expect(!a.isDefinedComparison(with: b))
        #expect(!(a < b))
        #expect(!(a > b))
        #expect(SerialNumber(0) < SerialNumber(0x7FFF_FFFF))
        #expect(SerialNumber(0) > SerialNumber(0x8000_0001))
    }

    @Test(arguments: [UInt32(0), 1, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFE, 0xFFFF_FFFF])
    func successorIsGreaterEverywhere(start: UInt32) {
        let s = SerialNumber(start)
        #expect(s + 1 > s)
        #expect(s + 0x7FFF_FFFF > s)
        #expect(s < s + 1000)
    }
}
