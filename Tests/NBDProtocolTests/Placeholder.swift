import Testing

@Test func placeholderNBDProtocolTests() {}
