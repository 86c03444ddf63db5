import NIOCore

/// Runs `count` sub-commands with at most `maxInFlight` outstanding, on `loop`. Completes when all have
/// completed; fails with the first error (no new sub-commands start after a failure, but those in flight
/// are waited for, so nothing is still writing when the request fails).
func runChunks(
    count: Int, maxInFlight: Int, on loop: any EventLoop,
    _ body: @escaping @Sendable (Int) -> EventLoopFuture<Void>
) -> EventLoopFuture<Void> {
    if count == 0 { return loop.makeSucceededVoidFuture() }
    if count == 1 { return body(0) }
    let promise = loop.makePromise(of: Void.self)
    struct State {
        var next = 0
        var inFlight = 0
        var firstError: (any Error)?
        /// Set while `pump` runs, so that synchronous completions do not recurse (the loop picks them up).
        var pumping = false
    }
    let state = NIOLoopBoundBox.makeBoxSendingValue(State(), as: State.self, eventLoop: loop)

    @Sendable func pump() {
        loop.preconditionInEventLoop()
        if state.value.pumping { return }
        state.value.pumping = true
        defer { state.value.pumping = false }
        while state.value.firstError == nil, state.value.next < count, state.value.inFlight < maxInFlight {
            let index = state.value.next
            state.value.next += 1
            state.value.inFlight += 1
            body(index).hop(to: loop).whenComplete { result in
                state.value.inFlight -= 1
                if case .failure(let error) = result, state.value.firstError == nil {
                    state.value.firstError = error
                }
                if state.value.inFlight == 0, state.value.firstError != nil || state.value.next == count {
                    if let error = state.value.firstError {
                        promise.fail(error)
                    } else {
                        promise.succeed()
                    }
                } else {
                    pump()
                }
            }
        }
    }
    loop.execute { pump() }
    return promise.futureResult
}
