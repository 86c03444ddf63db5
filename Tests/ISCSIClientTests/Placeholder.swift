import Testing

@Test func placeholderISCSIClientTests() {}
