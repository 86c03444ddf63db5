import Testing

@Test func placeholderISCSIProtocolTests() {}
